"""`cxrtool prepare SOURCE ...`: build a study manifest."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cxrtool.cli.common import out, print_json, run
from cxrtool.data.prepare import prepare_csv

app = typer.Typer(help="Turn a dataset into a study-level Parquet manifest (labels become report-like text).",
                  no_args_is_help=True)


@app.command("csv")
def csv_cmd(
    csv_path: Path = typer.Argument(..., help="CSV with one row per image."),
    out_path: Path = typer.Option(Path("manifest.parquet"), "--out", "-o", help="Manifest to write."),
    image_col: str = typer.Option(None, help="Column with image paths (default: path/image/filename)."),
    patient_col: str = typer.Option(None, help="Column with a patient id (splits are by patient)."),
    study_col: str = typer.Option(None, help="Column grouping rows into studies (default: one study per row)."),
    view_col: str = typer.Option(None, help="Column with the view (PA/AP/LATERAL)."),
    report_col: str = typer.Option(None, help="Column with report text."),
    labels: str = typer.Option(None, help="Comma-separated label columns (default: every 1/0/-1/blank column)."),
    split_col: str = typer.Option(None, help="Column with train/validate/test (default: hash of patient)."),
    image_root: Path = typer.Option(None, help="Folder image paths are relative to (default: the CSV's folder)."),
    validate: float = typer.Option(0.1, help="Fraction of patients for validation when no split column."),
    test: float = typer.Option(0.0, help="Fraction of patients for test when no split column."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """A CSV of image paths with label columns and/or report text -> manifest.

    Label cells: 1 positive, 0 negative, -1 uncertain, blank not mentioned. Label-only rows get
    deterministic prompt text (e.g. 'cardiomegaly. pleural effusion.'); training draws fresh
    random prompts.
    """
    summary = run(lambda: prepare_csv(
        csv_path, out_path, image_col=image_col, patient_col=patient_col, study_col=study_col,
        view_col=view_col, report_col=report_col, label_cols=labels.split(",") if labels else None,
        split_col=split_col, image_root=image_root, validate_fraction=validate, test_fraction=test,
        source="csv"))
    if as_json:
        print_json(summary.to_dict())
        return
    out.print(f"wrote [bold]{summary.manifest}[/]: {summary.studies} studies, {summary.images} images, "
              f"splits {summary.splits}")
    if summary.missing_images:
        out.print(f"[yellow]warning:[/] {summary.missing_images} image paths do not exist")
    table = Table("label", "positive", "negative", "uncertain")
    for label, c in summary.label_counts.items():
        table.add_row(label, str(c.get("positive", 0)), str(c.get("negative", 0)), str(c.get("uncertain", 0)))
    if summary.label_counts:
        out.print(table)
