"""`cxrtool prepare`: source tables -> a validated study manifest."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cxrtool.data.manifest import write_manifest
from cxrtool.data.sources.csv_table import read_csv_studies


@dataclass
class PrepareSummary:
    manifest: str
    studies: int
    images: int
    splits: dict[str, int]
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    missing_images: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def prepare_csv(csv_path: str | Path, out: str | Path, check_files: bool = True, **options) -> PrepareSummary:
    """CSV of image paths with labels/report text -> manifest; see ``read_csv_studies`` options."""
    studies = read_csv_studies(csv_path, **options)
    missing = sum(1 for s in studies for i in s.images if check_files and not Path(i.path).is_file())
    write_manifest(studies, out)
    labels: dict[str, Counter] = {}
    for s in studies:
        for k, v in s.labels.items():
            labels.setdefault(k, Counter())[{1: "positive", 0: "negative", -1: "uncertain"}[v]] += 1
    return PrepareSummary(str(out), len(studies), sum(len(s.images) for s in studies),
                          dict(Counter(s.split for s in studies)),
                          {k: dict(v) for k, v in sorted(labels.items())}, missing)
