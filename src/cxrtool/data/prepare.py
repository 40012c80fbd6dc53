"""`cxrtool prepare`: a source dataset -> a validated study manifest, a rejects file and stats.

Every adapter returns studies plus :class:`Reject` records. Nothing is dropped silently: each
dropped row and each flagged study (image file missing on this machine, empty report, no
images) is written to ``<manifest>.rejects.jsonl`` with its reason, and counted in the stats.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cxrtool.data.manifest import Study, write_manifest
from cxrtool.data.sources.chexpert import read_chexpert_studies
from cxrtool.data.sources.common import Reject
from cxrtool.data.sources.csv_table import read_csv_studies
from cxrtool.data.sources.dicom_folder import read_dicom_folder_studies
from cxrtool.data.sources.mimic import read_mimic_studies
from cxrtool.data.sources.nih import read_nih_studies
from cxrtool.data.sources.openi import read_openi_studies
from cxrtool.errors import ManifestError

_VALUE_NAMES = {1: "positive", 0: "negative", -1: "uncertain"}


@dataclass
class PrepareSummary:
    manifest: str
    rejects_file: str
    studies: int
    images: int
    splits: dict[str, int]
    views: dict[str, int]
    sections: dict[str, int]
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> kind -> n (all splits)
    label_counts_by_split: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    missing_images: int = 0
    dropped_rows: int = 0
    flagged_studies: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def manifest_stats(studies: list[Study]) -> dict:
    """Counts a reader of the manifest would check: splits, views, sections, labels per split."""
    labels: dict[str, Counter] = {}
    by_split: dict[str, dict[str, Counter]] = {}
    for s in studies:
        for k, v in s.labels.items():
            labels.setdefault(k, Counter())[_VALUE_NAMES[v]] += 1
            by_split.setdefault(s.split, {}).setdefault(k, Counter())[_VALUE_NAMES[v]] += 1
    return {
        "studies": len(studies),
        "images": sum(len(s.images) for s in studies),
        "splits": dict(sorted(Counter(s.split for s in studies).items())),
        "views": dict(Counter(i.view or "unknown" for s in studies for i in s.images).most_common()),
        "sections": {"findings": sum(bool(s.findings) for s in studies),
                     "impression": sum(bool(s.impression) for s in studies),
                     "report": sum(bool(s.report) for s in studies),
                     "labels": sum(bool(s.labels) for s in studies)},
        "label_counts": {k: dict(v) for k, v in sorted(labels.items())},
        "label_counts_by_split": {sp: {k: dict(v) for k, v in sorted(d.items())} for sp, d in sorted(by_split.items())},
    }


def check_disjoint_splits(studies: list[Study]) -> None:
    """A patient in two splits leaks test data into training: refuse it."""
    seen: dict[str, str] = {}
    for s in studies:
        other = seen.setdefault(s.patient_key, s.split)
        if other != s.split:
            raise ManifestError(f"patient {s.patient_key!r} is in both {other!r} and {s.split!r}",
                                "fix the split column, or let cxrtool split by patient hash")


def _finish(studies: list[Study], rejects: list[Reject], out: Path, check_files: bool) -> PrepareSummary:
    if not studies:
        raise ManifestError("no usable studies in the source", f"see the reasons in {out}.rejects.jsonl")
    check_disjoint_splits(studies)
    missing = 0
    if check_files:
        for s in studies:
            absent = [i.path for i in s.images if not Path(i.path).is_file()]
            missing += len(absent)
            if absent:
                rejects.append(Reject(s.study_key, f"{len(absent)} image file(s) not found, e.g. {absent[0]}", "kept",
                                      s.study_key))
    write_manifest(studies, out)
    rejects_path = out.with_name(out.name + ".rejects.jsonl")
    with open(rejects_path, "w") as fh:
        for r in rejects:
            fh.write(json.dumps(r.to_dict()) + "\n")
    stats = manifest_stats(studies)
    reasons = Counter(r.reason if "image file(s) not found" not in r.reason else "image file(s) not found"
                      for r in rejects)
    return PrepareSummary(str(out), str(rejects_path), stats["studies"], stats["images"], stats["splits"],
                          stats["views"], stats["sections"], stats["label_counts"], stats["label_counts_by_split"],
                          missing, sum(r.action == "dropped" for r in rejects),
                          len({r.study_key for r in rejects if r.action == "kept"}), dict(reasons.most_common()))


def _prepare(reader: Callable[..., list[Study]], input_path: str | Path, out: str | Path, check_files: bool,
             **options) -> PrepareSummary:
    rejects: list[Reject] = []
    studies = reader(input_path, rejects=rejects, **options)
    return _finish(studies, rejects, Path(out), check_files)


def prepare_csv(csv_path: str | Path, out: str | Path, check_files: bool = True, **options) -> PrepareSummary:
    """A CSV of image paths with labels/report text (see ``read_csv_studies``) -> manifest."""
    return _prepare(read_csv_studies, csv_path, out, check_files, **options)


def prepare_nih(csv_path: str | Path, out: str | Path, check_files: bool = True, **options) -> PrepareSummary:
    """NIH ChestX-ray14 ``Data_Entry_2017*.csv`` -> manifest (see ``read_nih_studies``)."""
    return _prepare(read_nih_studies, csv_path, out, check_files, **options)


def prepare_chexpert(csv_path: str | Path, out: str | Path, check_files: bool = True, **options) -> PrepareSummary:
    """CheXpert ``train.csv``/``valid.csv`` -> manifest (see ``read_chexpert_studies``)."""
    return _prepare(read_chexpert_studies, csv_path, out, check_files, **options)


def prepare_openi(source: str | Path, out: str | Path, check_files: bool = True, **options) -> PrepareSummary:
    """OpenI ``NLMCXR_reports.tgz`` (or its XML folder) -> manifest (see ``read_openi_studies``)."""
    return _prepare(read_openi_studies, source, out, check_files, **options)


def prepare_mimic(root: str | Path, out: str | Path, check_files: bool = True, **options) -> PrepareSummary:
    """MIMIC-CXR(-JPG) root with its CSVs (+ report tree) -> manifest (see ``read_mimic_studies``)."""
    return _prepare(read_mimic_studies, root, out, check_files, **options)


def prepare_dicom_folder(folder: str | Path, out: str | Path, check_files: bool = True, **options) -> PrepareSummary:
    """DICOM folder + optional reports CSV -> manifest (see ``read_dicom_folder_studies``)."""
    return _prepare(read_dicom_folder_studies, folder, out, check_files, **options)
