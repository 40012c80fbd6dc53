"""`embed --manifest FILE`: a study manifest joined to the archive's files.

A research archive's own table knows what its paths cannot say: which images are one study,
whose they are, the view, the labels. The manifest is either a `cxrtool prepare` output (Parquet;
image paths absolute) or a CSV with a ``path`` column and optional study / patient / view columns
(any other column whose values are all 1 / 0 / -1 / empty is a label). A file is matched by its
absolute path, then its archive-relative path, then its file name when that name is unique in the
manifest. Patient ids are pseudonymised with the installation's (or the given) key like DICOM
PatientIDs; keys already pseudonymous (``pt-...``) are kept. With a manifest, files it lacks are
skipped with a reason, and manifest images with no file are listed in errors.jsonl.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from cxrtool.data.sources.common import open_text
from cxrtool.errors import ManifestError
from cxrtool.privacy import pseudonym

STUDY_COLUMNS = ("study_key", "study", "study_id", "StudyInstanceUID")
PATIENT_COLUMNS = ("patient_key", "patient_id", "patient", "PatientID", "subject_id")
VIEW_COLUMNS = ("view", "ViewPosition", "view_position", "projection")
LABEL_VALUES = {"", "0", "1", "-1", "0.0", "1.0", "-1.0"}


@dataclass
class ManifestJoin:
    """Manifest image path -> its study, pseudonymous patient key, view and labels."""

    source: str
    by_path: dict[str, dict] = field(default_factory=dict)  # absolute (resolved) path -> entry
    by_rel: dict[str, dict] = field(default_factory=dict)  # path as written in a CSV -> entry
    by_name: dict[str, dict | None] = field(default_factory=dict)  # file name -> entry (None: ambiguous)

    @property
    def name(self) -> str:
        return Path(self.source).name

    def add(self, path: str, base: Path, entry: dict) -> None:
        p = Path(path)
        self.by_rel[path.replace("\\", "/")] = entry
        self.by_path[str((p if p.is_absolute() else base / p).resolve())] = entry
        self.by_name[p.name] = None if p.name in self.by_name else entry

    def lookup(self, rel: str, path: Path) -> dict | None:
        return (self.by_path.get(str(path.resolve())) or self.by_rel.get(rel)
                or self.by_name.get(Path(rel).name))

    def unmatched(self, matched_ids: set[int]) -> list[str]:
        """Manifest image paths that no archive file matched (entries are told apart by identity)."""
        return sorted(e["_path"] for e in self.by_path.values() if id(e) not in matched_ids)


def _patient(value: str | None, key: str) -> str | None:
    if not value:
        return None
    return value if value.startswith("pt-") else pseudonym(value, key)


def load_manifest_join(path: str | Path, key: str) -> ManifestJoin:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} not found",
                            "pass a `cxrtool prepare` manifest or a CSV with a path column")
    join = ManifestJoin(str(path))
    if path.suffix == ".parquet":
        from cxrtool.data.manifest import read_manifest

        for study in read_manifest(path):
            for image in study.images:
                join.add(image.path, path.parent, {"_path": image.path, "study_key": study.study_key,
                                                    "patient_key": _patient(study.patient_key, key),
                                                    "view": (image.view or "").upper(), "labels": dict(study.labels)})
        return join
    with open_text(path) as fh:
        rows = list(csv.DictReader(fh))
    columns = list(rows[0]) if rows else []
    if "path" not in columns:
        raise ManifestError(f"{path}: no 'path' column; columns are {', '.join(columns)}",
                            "a CSV manifest needs a path column (archive-relative, absolute, or file names)")
    pick = lambda names: next((c for c in names if c in columns), None)  # noqa: E731
    study_col, patient_col, view_col = pick(STUDY_COLUMNS), pick(PATIENT_COLUMNS), pick(VIEW_COLUMNS)
    ids = {"path", study_col, patient_col, view_col}
    label_cols = [c for c in columns if c not in ids and all((r[c] or "").strip() in LABEL_VALUES for r in rows)]
    for r in rows:
        rel = r["path"].strip()
        labels = {c: int(float(r[c])) for c in label_cols if (r[c] or "").strip()}
        join.add(rel, path.parent, {"_path": rel, "study_key": (r.get(study_col) or "").strip() if study_col else "",
                                    "patient_key": _patient((r.get(patient_col) or "").strip() if patient_col else "",
                                                            key),
                                    "view": (r.get(view_col) or "").strip().upper() if view_col else "",
                                    "labels": labels})
    return join
