"""`cxrtool prepare SOURCE ...`: build a study manifest (one subcommand per source layout)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cxrtool.cli.common import PSEUDONYM_KEY_HELP, out, print_json, run

if TYPE_CHECKING:
    from cxrtool.data.prepare import PrepareSummary

app = typer.Typer(help="Turn a dataset into a study-level Parquet manifest (labels become report-like text).",
                  no_args_is_help=True)

OUT = typer.Option(Path("manifest.parquet"), "--out", "-o", help="Manifest to write (rejects go beside it).")
VALIDATE = typer.Option(0.1, help="Fraction of patients for validation (hashed split).")
TEST = typer.Option(0.0, help="Fraction of patients for test (hashed split; default 0: `cxrtool evaluate` then "
                   "scores the validate split).")
JSON = typer.Option(False, "--json", help="Print the summary as JSON.")
STATS = typer.Option(False, "--stats", help="Also print per-split label counts.")
NO_CHECK = typer.Option(False, "--no-check-files", help="Do not check that image files exist.")


def _render(s: PrepareSummary, as_json: bool, stats: bool) -> None:
    from rich.table import Table

    if as_json:
        print_json(s.to_dict())
        return
    out.print(f"wrote [bold]{s.manifest}[/]: {s.studies} studies, {s.images} images, splits {s.splits}")
    out.print(f"sections: {s.sections}; views: {dict(list(s.views.items())[:6])}")
    if s.reject_reasons:
        out.print(f"[yellow]{s.dropped_rows} rows dropped, {s.flagged_studies} studies flagged[/] "
                  f"({s.reject_reasons}) -> {s.rejects_file}", highlight=False)
    splits = list(s.label_counts_by_split) if stats else ["all"]
    table = Table("label", *[f"{sp} +/-/?" for sp in splits])
    for label in s.label_counts:
        cells = []
        for sp in splits:
            c = s.label_counts[label] if sp == "all" else s.label_counts_by_split[sp].get(label, {})
            cells.append(f"{c.get('positive', 0)}/{c.get('negative', 0)}/{c.get('uncertain', 0)}")
        table.add_row(label, *cells)
    if s.label_counts:
        out.print(table)


@app.command("csv")
def csv_cmd(
    csv_path: Path = typer.Argument(..., help="CSV with one row per image."),
    out_path: Path = OUT,
    image_col: str = typer.Option(None, help="Column with image paths (default: path/image/filename)."),
    patient_col: str = typer.Option(None, help="Column with a patient id (splits are by patient)."),
    study_col: str = typer.Option(None, help="Column grouping rows into studies (default: one study per row)."),
    view_col: str = typer.Option(None, help="Column with the view (PA/AP/LATERAL)."),
    report_col: str = typer.Option(None, help="Column with report text."),
    labels: str = typer.Option(None, help="Comma-separated label columns (default: every 1/0/-1/blank column)."),
    split_col: str = typer.Option(None, help="Column with train/validate/test (default: hash of patient)."),
    bbox_col: str = typer.Option(None, help="Column of radiologist boxes [[finding, x, y, w, h], ...] in the "
                                 "1,024-px grid, giving findings their side (default: bbox_json if present)."),
    image_root: Path = typer.Option(None, help="Folder image paths are relative to (default: the CSV's folder)."),
    validate: float = VALIDATE, test: float = TEST, no_check_files: bool = NO_CHECK,
    stats: bool = STATS, as_json: bool = JSON,
) -> None:
    """A CSV of image paths with label columns and/or report text -> manifest.

    Label cells: 1 positive, 0 negative, -1 uncertain, blank not mentioned. Label-only rows get
    deterministic prompt text (e.g. 'cardiomegaly. pleural effusion.'); training draws fresh
    random prompts.
    """
    from cxrtool.data.prepare import prepare_csv

    s = run(lambda: prepare_csv(
        csv_path, out_path, check_files=not no_check_files, image_col=image_col, patient_col=patient_col,
        study_col=study_col, view_col=view_col, report_col=report_col,
        label_cols=labels.split(",") if labels else None, split_col=split_col, bbox_col=bbox_col,
        image_root=image_root,
        validate_fraction=validate, test_fraction=test, source="csv"))
    _render(s, as_json, stats)


@app.command("nih")
def nih_cmd(
    csv_path: Path = typer.Argument(..., help="Data_Entry_2017*.csv(.gz) of NIH ChestX-ray14."),
    out_path: Path = OUT,
    image_root: Path = typer.Option(None, help="Folder of the PNGs, searched recursively (default CSV_DIR/images)."),
    split_lists: Path = typer.Option(None, help="Folder with train_val_list.txt / test_list.txt (official split)."),
    bbox_list: Path = typer.Option(None, help="BBox_List_2017.csv: radiologist boxes, giving findings their side."),
    validate: float = VALIDATE, test: float = TEST, no_check_files: bool = NO_CHECK,
    stats: bool = STATS, as_json: bool = JSON,
) -> None:
    """NIH ChestX-ray14: one study per image, '|'-separated findings -> labels and prompt text."""
    from cxrtool.data.prepare import prepare_nih

    s = run(lambda: prepare_nih(csv_path, out_path, check_files=not no_check_files, image_root=image_root,
                                split_dir=split_lists, bbox_list=bbox_list, validate_fraction=validate,
                                test_fraction=test))
    _render(s, as_json, stats)


@app.command("chexpert")
def chexpert_cmd(
    csv_path: Path = typer.Argument(..., help="CheXpert train.csv / valid.csv (.gz allowed)."),
    out_path: Path = OUT,
    image_root: Path = typer.Option(None, help="Folder containing CheXpert-v1.0(-small)/ (default: two levels up)."),
    hashed_split: bool = typer.Option(False, help="Split by patient hash instead of the file's official split."),
    validate: float = VALIDATE, test: float = TEST, no_check_files: bool = NO_CHECK,
    stats: bool = STATS, as_json: bool = JSON,
) -> None:
    """CheXpert: rows grouped into patient/study, 1 / 0 / -1 / blank labels kept as such."""
    from cxrtool.data.prepare import prepare_chexpert

    s = run(lambda: prepare_chexpert(csv_path, out_path, check_files=not no_check_files, image_root=image_root,
                                     hashed=hashed_split, validate_fraction=validate, test_fraction=test))
    _render(s, as_json, stats)


@app.command("openi")
def openi_cmd(
    source: Path = typer.Argument(..., help="NLMCXR_reports.tgz or the folder of its XML files."),
    out_path: Path = OUT,
    image_root: Path = typer.Option(None, help="Folder of the OpenI PNGs (default: SOURCE_DIR/NLMCXR_png)."),
    metadata: Path = typer.Option(None, help="nlmcxr_dicom_metadata.csv(.gz), for view positions."),
    validate: float = VALIDATE, test: float = TEST, no_check_files: bool = NO_CHECK,
    stats: bool = STATS, as_json: bool = JSON,
) -> None:
    """OpenI / Indiana reports: findings + impression sections, MeSH headings -> labels."""
    from cxrtool.data.prepare import prepare_openi

    s = run(lambda: prepare_openi(source, out_path, check_files=not no_check_files, image_root=image_root,
                                  metadata=metadata, validate_fraction=validate, test_fraction=test))
    _render(s, as_json, stats)


@app.command("mimic")
def mimic_cmd(
    root: Path = typer.Argument(..., help="MIMIC-CXR(-JPG) root: metadata/split/label CSVs and files/."),
    out_path: Path = OUT,
    reports: Path = typer.Option(None, help="Folder holding files/pNN/pSUBJECT/sSTUDY.txt (default: ROOT)."),
    image_ext: str = typer.Option(".jpg", help="Image extension: .jpg (MIMIC-CXR-JPG) or .dcm (MIMIC-CXR)."),
    labeler: str = typer.Option("chexpert", help="Label file: chexpert or negbio."),
    validate: float = VALIDATE, test: float = TEST, no_check_files: bool = NO_CHECK,
    stats: bool = STATS, as_json: bool = JSON,
) -> None:
    """MIMIC-CXR: official split, views from metadata, findings/impression from the report tree."""
    from cxrtool.data.prepare import prepare_mimic

    s = run(lambda: prepare_mimic(root, out_path, check_files=not no_check_files, reports_dir=reports,
                                  image_ext=image_ext, labeler=labeler, validate_fraction=validate,
                                  test_fraction=test))
    _render(s, as_json, stats)


@app.command("dicom")
def dicom_cmd(
    folder: Path = typer.Argument(..., help="Folder of DICOM files (any nesting, extensions optional)."),
    out_path: Path = OUT,
    reports_csv: Path = typer.Option(None, "--reports", help="CSV with one report per study."),
    match_on: str = typer.Option("study_uid", help="Join reports on study_uid or accession."),
    key_col: str = typer.Option(None, help="Reports CSV key column (default StudyInstanceUID / AccessionNumber)."),
    report_col: str = typer.Option("report", help="Reports CSV column with the report text."),
    pseudonym_key: str = typer.Option(None, envvar="CXRTOOL_PSEUDONYM_KEY",
                                      help=PSEUDONYM_KEY_HELP),
    validate: float = VALIDATE, test: float = TEST,
    stats: bool = STATS, as_json: bool = JSON,
) -> None:
    """A PACS export: studies by StudyInstanceUID, pseudonymous patient keys, reports joined from a CSV."""
    from cxrtool.data.prepare import prepare_dicom_folder

    s = run(lambda: prepare_dicom_folder(folder, out_path, reports_csv=reports_csv, match_on=match_on,
                                         key_col=key_col, report_col=report_col, pseudonym_key=pseudonym_key,
                                         validate_fraction=validate, test_fraction=test))
    _render(s, as_json, stats)
