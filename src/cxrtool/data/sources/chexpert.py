"""CheXpert: ``train.csv`` / ``valid.csv`` with 1 / 0 / -1 / blank per finding.

Layout (as published)::

    CheXpert-v1.0-small/train.csv   Path, Sex, Age, Frontal/Lateral, AP/PA, No Finding, ..., Support Devices
    CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg

Rows are grouped into studies by ``patientNNNNN/studyN``; the official split comes from the file
name (train -> train, valid -> validate, test -> test) unless a hashed split is asked for.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

from cxrtool.data.manifest import Study, StudyImage, merge_label
from cxrtool.data.prompts import PromptBank
from cxrtool.data.sources.common import Reject, first_bad_label, hashed_split, open_text, parse_label
from cxrtool.errors import ManifestError

CHEXPERT_LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                   "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                   "Fracture", "Support Devices")


def _official(csv_path: Path) -> str:
    name = csv_path.name.lower()
    if "valid" in name:
        return "validate"
    if "test" in name:
        return "test"
    return "train"


def read_chexpert_studies(csv_path: str | Path, image_root: str | Path | None = None, hashed: bool = False,
                          validate_fraction: float = 0.1, test_fraction: float = 0.0,
                          bank: PromptBank | None = None, rejects: list[Reject] | None = None) -> list[Study]:
    csv_path = Path(csv_path)
    rejects = [] if rejects is None else rejects
    bank = bank or PromptBank.load()
    with open_text(csv_path) as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if "Path" not in header:
            raise ManifestError(f"{csv_path}: not a CheXpert table (no 'Path' column)")
        labels_present = [c for c in CHEXPERT_LABELS if c in header]
        rows = list(reader)
    # Paths start with the dataset folder ("CheXpert-v1.0-small/train/..."); by default resolve them
    # against the folder that holds the dataset folder (the CSV usually sits inside it).
    root = Path(image_root) if image_root else csv_path.parent.parent
    official = _official(csv_path)
    studies: dict[str, Study] = {}
    for lineno, row in enumerate(rows, start=2):
        rel = PurePosixPath(row["Path"].strip())
        if len(rel.parts) < 4:
            rejects.append(Reject(f"{csv_path.name}:{lineno}", f"unexpected path {str(rel)!r}", "dropped"))
            continue
        try:
            values = {c: parse_label(row.get(c)) for c in labels_present}
        except ValueError:
            bad = first_bad_label(row, labels_present)
            rejects.append(Reject(f"{csv_path.name}:{lineno}", f"label {bad!r} has value {row[bad]!r}", "dropped"))
            continue
        patient, study_dir = rel.parts[-3], rel.parts[-2]
        key = f"{rel.parts[-4]}/{patient}/{study_dir}"
        frontal = (row.get("Frontal/Lateral") or "").strip().lower()
        view = "LATERAL" if frontal == "lateral" else (row.get("AP/PA") or "").strip().upper()
        study = studies.get(key)
        if study is None:
            split = hashed_split(patient, validate_fraction, test_fraction) if hashed else official
            study = Study(key, patient, split, "chexpert", [])
            studies[key] = study
        study.images.append(StudyImage(str(root / rel), view))
        for c, v in values.items():
            if v is not None:  # rows of one study carry the same labels; keep the strongest
                study.labels[c] = merge_label(study.labels.get(c), v)
    for study in studies.values():
        study.text = bank.to_text(study.labels)
        if not study.labels:
            rejects.append(Reject(csv_path.name, "no labels in any row of the study", "kept", study.study_key))
    return list(studies.values())
