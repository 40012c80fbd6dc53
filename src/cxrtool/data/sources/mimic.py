"""MIMIC-CXR / MIMIC-CXR-JPG: metadata, split and label CSVs plus the report .txt tree.

Layout (as published on PhysioNet)::

    ROOT/mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id, subject_id, study_id, ViewPosition, ...
    ROOT/mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, study_id, subject_id, split (train/validate/test)
    ROOT/mimic-cxr-2.0.0-chexpert.csv(.gz)   subject_id, study_id, 14 labels as 1.0 / 0.0 / -1.0 / blank
    ROOT/files/p10/p10000032/s50414267/<dicom_id>.jpg        (MIMIC-CXR-JPG; .dcm for MIMIC-CXR)
    REPORTS/files/p10/p10000032/s50414267.txt                 (mimic-cxr-reports.zip, extracted)

Studies are ``s<study_id>``, patients ``p<subject_id>``, views come from the metadata and the
official split is kept. Sides of findings come from the report's findings and impression
(``data/laterality.py``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from cxrtool.data.laterality import sides_for_study
from cxrtool.data.manifest import Study, StudyImage, merge_label
from cxrtool.data.prompts import PromptBank
from cxrtool.data.sections import parse_report
from cxrtool.data.sources.common import Reject, hashed_split, normalise_split, open_text, parse_label
from cxrtool.errors import ManifestError

LABEL_FILES = {"chexpert": "*chexpert.csv*", "negbio": "*negbio.csv*"}


def _find(root: Path, pattern: str, required: bool = True) -> Path | None:
    hits = sorted(root.glob(pattern))
    if not hits and required:
        raise ManifestError(f"{root}: no file matching {pattern}", "point at the MIMIC-CXR(-JPG) root folder")
    return hits[0] if hits else None


def _rows(path: Path) -> list[dict[str, str]]:
    with open_text(path) as fh:
        return list(csv.DictReader(fh))


def read_mimic_studies(root: str | Path, reports_dir: str | Path | None = None, image_ext: str = ".jpg",
                       labeler: str = "chexpert", validate_fraction: float = 0.1, test_fraction: float = 0.0,
                       bank: PromptBank | None = None, rejects: list[Reject] | None = None) -> list[Study]:
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    rejects = [] if rejects is None else rejects
    bank = bank or PromptBank.load()
    reports = Path(reports_dir) if reports_dir else root
    metadata = _rows(_find(root, "*metadata.csv*"))
    split_path = _find(root, "*split.csv*", required=False)
    splits = ({r["dicom_id"]: normalise_split(r["split"], split_path.name) for r in _rows(split_path)}
              if split_path else {})
    label_path = _find(root, LABEL_FILES.get(labeler, labeler), required=False)
    labels: dict[tuple[str, str], dict[str, int]] = {}
    if label_path:
        for lineno, row in enumerate(_rows(label_path), start=2):
            key = (row.pop("subject_id").strip(), row.pop("study_id").strip())
            try:
                values = {bank.canonical(k): parse_label(v) for k, v in row.items()}
            except ValueError:
                rejects.append(Reject(f"{label_path.name}:{lineno}", "unparseable label value", "dropped"))
                continue
            labels[key] = {k: v for k, v in values.items() if v is not None}
    studies: dict[str, Study] = {}
    for row in metadata:
        subject, study_id, dicom_id = row["subject_id"].strip(), row["study_id"].strip(), row["dicom_id"].strip()
        key = f"s{study_id}"
        folder = Path("files") / f"p{subject[:2]}" / f"p{subject}" / f"s{study_id}"
        study = studies.get(key)
        if study is None:
            split = splits.get(dicom_id)
            if split is None:
                split = hashed_split(f"p{subject}", validate_fraction, test_fraction)
                if splits:
                    rejects.append(Reject(key, "not in the official split file; split by patient hash", "kept", key))
            report_path = reports / folder.with_suffix(".txt")
            sections = parse_report(report_path.read_text(errors="replace")) if report_path.is_file() else None
            study_labels = {}
            for k, v in labels.get((subject, study_id), {}).items():
                study_labels[k] = merge_label(study_labels.get(k), v)
            study = Study(key, f"p{subject}", split, "mimic-cxr", [],
                          sections.findings if sections else None, sections.impression if sections else None,
                          sections.full if sections else None, study_labels)
            text = sections.main_text() if sections else None
            if sections:
                study.sides = sides_for_study(study_labels, text=sections.observations())
            study.text = text or (sections.full if sections and sections.full else "") or bank.to_text(
                study_labels, sides=study.sides)
            if sections is None:
                rejects.append(Reject(key, f"report not found: {report_path}", "kept", key))
            studies[key] = study
        view = (row.get("ViewPosition") or "").strip().upper()
        study.images.append(StudyImage(str(root / folder / f"{dicom_id}{image_ext}"), view))
    return list(studies.values())
