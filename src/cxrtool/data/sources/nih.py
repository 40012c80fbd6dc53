"""NIH ChestX-ray14: ``Data_Entry_2017*.csv(.gz)`` + optional ``train_val_list.txt``/``test_list.txt``.

Layout (as published)::

    Data_Entry_2017_v2020.csv   Image Index, Finding Labels (A|B|... or "No Finding"), Follow-up #,
                                Patient ID, Patient Age, Patient Gender, View Position, ...
    images_001/images/*.png ... images_012/images/*.png   (or one images/ folder)
    train_val_list.txt, test_list.txt                      (official split, one file name a line)

    BBox_List_2017.csv                                     (radiologist boxes for 984 images: Image Index,
                                                            Finding Label, x, y, w, h in the 1,024-px grid)

Every image is its own study (one view per follow-up visit). All 14 findings are labelled:
listed = 1, not listed = 0 (the prompt converter samples a few of the 0s as negatives). Boxes,
from ``bbox_list`` or a ``bbox_json`` column in the table, give findings their side
(``data/laterality.py``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from cxrtool.data.laterality import Box, frontal_view, parse_bbox_json, sides_for_study
from cxrtool.data.manifest import Study, StudyImage
from cxrtool.data.prompts import NO_FINDING, PromptBank
from cxrtool.data.sources.common import Reject, hashed_split, open_text
from cxrtool.errors import ManifestError

NIH_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
              "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax")
REQUIRED = ("Image Index", "Finding Labels", "Patient ID")


def _official_split(split_dir: Path | None) -> dict[str, str]:
    if split_dir is None:
        return {}
    out = {}
    for name, split in (("test_list.txt", "test"), ("train_val_list.txt", "train")):
        path = split_dir / name
        if path.is_file():
            out.update({line.strip(): split for line in path.read_text().splitlines() if line.strip()})
    if not out:
        raise ManifestError(f"{split_dir}: no train_val_list.txt / test_list.txt here")
    return out


def read_bbox_list(path: str | Path) -> dict[str, list[Box]]:
    """``BBox_List_2017.csv`` -> image name -> boxes. Its header ("Bbox [x,y,w,h]" split over four
    columns) is irregular, so rows are read by position: name, finding, x, y, w, h."""
    path = Path(path)
    out: dict[str, list[Box]] = {}
    with open_text(path) as fh:
        rows = list(csv.reader(fh))
    for lineno, row in enumerate(rows[1:], start=2):
        try:
            box = Box(row[1].strip(), float(row[2]), float(row[3]), float(row[4]), float(row[5]))
        except (IndexError, ValueError):
            raise ManifestError(f"{path.name}:{lineno}: not 'Image Index, Finding Label, x, y, w, h'",
                                "pass the BBox_List_2017.csv published with ChestX-ray14") from None
        out.setdefault(row[0].strip(), []).append(box)
    return out


def read_nih_studies(csv_path: str | Path, image_root: str | Path | None = None, split_dir: str | Path | None = None,
                     bbox_list: str | Path | None = None, validate_fraction: float = 0.1,
                     test_fraction: float = 0.0, bank: PromptBank | None = None,
                     rejects: list[Reject] | None = None) -> list[Study]:
    csv_path = Path(csv_path)
    rejects = [] if rejects is None else rejects
    bank = bank or PromptBank.load()
    root = Path(image_root) if image_root else csv_path.parent / "images"
    official = _official_split(Path(split_dir) if split_dir else None)
    listed_boxes = read_bbox_list(bbox_list) if bbox_list else {}
    with open_text(csv_path) as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{csv_path}: not an NIH Data_Entry table (missing {missing})")
        rows = list(reader)
    found = {p.name: p for p in root.rglob("*.png")} if root.is_dir() else {}
    known = {bank.canonical(n): n for n in NIH_LABELS}
    studies = []
    for lineno, row in enumerate(rows, start=2):
        name = row["Image Index"].strip()
        findings = [f.strip() for f in row["Finding Labels"].split("|") if f.strip()]
        canon = [bank.canonical(f) for f in findings]
        unknown = [f for f, c in zip(findings, canon, strict=True) if c not in known and c != NO_FINDING]
        if unknown:
            rejects.append(Reject(f"{csv_path.name}:{lineno}", f"unknown finding {unknown[0]!r}", "dropped", name))
            continue
        labels = {c: 0 for c in known}
        labels.update({c: 1 for c in canon if c != NO_FINDING})
        labels[NO_FINDING] = 1 if not any(v == 1 for v in labels.values()) else 0
        patient = row["Patient ID"].strip()
        split = official.get(name)
        if split == "train" or (split is None and official):
            split = "validate" if hashed_split(patient, validate_fraction, 0.0) == "validate" else "train"
        elif split is None:
            split = hashed_split(patient, validate_fraction, test_fraction)
        path = found.get(name, root / name)
        view = (row.get("View Position") or "").strip().upper()
        boxes = list(listed_boxes.get(name, []))
        try:
            boxes += parse_bbox_json(row.get("bbox_json"))
        except ValueError as exc:
            rejects.append(Reject(f"{csv_path.name}:{lineno}", f"{exc}; no sides from its boxes", "kept",
                                  Path(name).stem))
        sides = sides_for_study(labels, boxes if frontal_view(view) else ())
        studies.append(Study(Path(name).stem, patient, split, "nih-chestxray14", [StudyImage(str(path), view)],
                             labels=labels, text=bank.to_text(labels, sides=sides), sides=sides))
    return studies
