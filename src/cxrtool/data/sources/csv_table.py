"""A plain CSV of image paths with labels and/or report text -> manifest studies.

Covers research sets shipped as "one row per image" tables (ChestX-ray14-style, custom sets).
Rows sharing a study id become one study with several images; without a study column each row
is its own study. Label cells: 1/1.0/true = positive, 0 = negative, -1 = uncertain, blank =
not mentioned. Sides of findings (the manifest's ``sides``) come from a ``bbox_json`` column
(NIH-style radiologist boxes on frontal images, 1,024-px grid) and from the report text
(``data/laterality.py``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from cxrtool.data.laterality import Box, frontal_view, parse_bbox_json, sides_for_study
from cxrtool.data.manifest import Study, StudyImage, merge_label
from cxrtool.data.prompts import PromptBank
from cxrtool.data.sections import parse_report
from cxrtool.data.sources.common import (
    LABEL_CELLS,
    Reject,
    first_bad_label,
    hashed_split,
    normalise_split,
    open_text,
    parse_label,
)
from cxrtool.errors import ManifestError

IMAGE_COLUMNS = ("path", "image", "image_path", "filename", "file", "Path")
ID_LIKE = {"path", "image", "image_path", "filename", "file", "patient_id", "patient", "study_id", "study",
           "view", "age", "sex", "split", "report", "text", "findings", "impression", "bbox_json"}
BBOX_COLUMN = "bbox_json"  # nih_512/labels.csv: [[finding, x, y, w, h], ...] in the original 1,024-px grid


def _detect_label_columns(header: Sequence[str], rows: list[dict[str, str]]) -> list[str]:
    out = []
    for col in header:
        if col.lower() in ID_LIKE:
            continue
        values = {r.get(col, "").strip().lower() for r in rows}
        if values and values <= set(LABEL_CELLS) and values - {""}:
            out.append(col)
    return out


def read_csv_studies(
    csv_path: str | Path,
    image_col: str | None = None,
    patient_col: str | None = None,
    study_col: str | None = None,
    view_col: str | None = None,
    report_col: str | None = None,
    label_cols: Sequence[str] | None = None,
    split_col: str | None = None,
    bbox_col: str | None = None,
    image_root: str | Path | None = None,
    source: str = "csv",
    validate_fraction: float = 0.1,
    test_fraction: float = 0.0,
    bank: PromptBank | None = None,
    rejects: list[Reject] | None = None,
) -> list[Study]:
    """Read the CSV and build studies; image paths are resolved against ``image_root`` (default:
    the CSV's folder) and stored absolute so the manifest can live anywhere. ``bbox_col`` (default:
    ``bbox_json`` when the CSV has it) holds radiologist boxes that give findings their side."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ManifestError(f"{csv_path}: file not found")
    rejects = [] if rejects is None else rejects
    with open_text(csv_path) as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if not rows:
        raise ManifestError(f"{csv_path}: no rows")
    if image_col is None:
        image_col = next((c for c in IMAGE_COLUMNS if c in header), None)
    if bbox_col is None and BBOX_COLUMN in header:
        bbox_col = BBOX_COLUMN
    for name, col in (("image", image_col), ("patient", patient_col), ("study", study_col), ("view", view_col),
                      ("report", report_col), ("split", split_col), ("bbox", bbox_col)):
        if col is not None and col not in header:
            raise ManifestError(f"{csv_path}: no {name} column {col!r}; columns are {', '.join(header)}")
    if image_col is None:
        raise ManifestError(f"{csv_path}: cannot tell which column holds image paths",
                            "pass --image-col NAME")
    labels = list(label_cols) if label_cols else _detect_label_columns(header, rows)
    unknown = [c for c in labels if c not in header]
    if unknown:
        raise ManifestError(f"{csv_path}: label column(s) {unknown} not found")
    if not labels and not report_col:
        raise ManifestError(f"{csv_path}: no label columns and no report column",
                            "pass --labels COL,COL or --report-col NAME")
    bank = bank or PromptBank.load()
    root = Path(image_root) if image_root else csv_path.parent
    studies: dict[str, Study] = {}
    boxes: dict[str, list[Box]] = {}
    for lineno, row in enumerate(rows, start=2):
        where = f"{csv_path.name}:{lineno}"
        rel = row[image_col].strip()
        if not rel:
            rejects.append(Reject(where, "empty image path", "dropped"))
            continue
        values: dict[str, int] = {}
        try:
            for col in labels:
                value = parse_label(row.get(col, ""))
                if value is not None:
                    values[col] = value
        except ValueError:
            bad = first_bad_label(row, labels)
            rejects.append(Reject(where, f"label {bad!r} has value {row[bad]!r} (expected 1, 0, -1 or blank)",
                                  "dropped"))
            continue
        image_path = Path(rel) if Path(rel).is_absolute() else (root / rel)
        key = row[study_col].strip() if study_col else rel
        patient = row[patient_col].strip() if patient_col else key
        study = studies.get(key)
        if study is None:
            split = normalise_split(row[split_col], where) if split_col else hashed_split(
                patient, validate_fraction, test_fraction)
            study = Study(key, patient, split, source, [])
            if report_col:
                study.report = row[report_col].strip() or None
            studies[key] = study
        view = row[view_col].strip().upper() if view_col else ""
        study.images.append(StudyImage(str(image_path.resolve()), view))
        for col, value in values.items():
            name = bank.canonical(col)
            study.labels[name] = merge_label(study.labels.get(name), value)
        if bbox_col and frontal_view(view):
            try:
                boxes.setdefault(key, []).extend(parse_bbox_json(row.get(bbox_col)))
            except ValueError as exc:
                rejects.append(Reject(where, f"{exc}; no sides from this row's boxes", "kept", key))
    for key, study in studies.items():
        report_text = parse_report(study.report).observations() if study.report else None
        study.sides = sides_for_study(study.labels, boxes.get(key, ()), report_text)
        study.text = study.report or bank.to_text(study.labels, sides=study.sides)
        if not study.report and not study.labels:
            rejects.append(Reject(csv_path.name, "no report text and no labels", "kept", study.study_key))
    return list(studies.values())
