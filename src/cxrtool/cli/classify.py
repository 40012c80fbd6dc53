"""`cxrtool classify PATH...`: zero-shot label probabilities per image."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cxrtool.cli.common import DEVICE_HELP, MODEL_HELP, console, out, pick_device, print_json, run
from cxrtool.constants import THRESHOLD

if TYPE_CHECKING:
    from cxrtool.evaluate.classify import Classification

WIDE = 6  # more labels than this: the table shows each image's top findings instead of every column


def classify_cmd(
    paths: list[Path] = typer.Argument(..., help="Image files, folders (searched recursively) or a workspace "
                                       "(its shards are classified without re-embedding)."),
    labels: str = typer.Option(None, help="Comma-separated labels (default: every label of the prompt bank, or "
                               "of --prompts). Synonyms work: effusion = Pleural Effusion."),
    prompts: Path = typer.Option(None, help='JSON of your own sentences: {"labels": {"Edema": {"positive": [...], '
                                 '"negative": [...]}}}.'),
    model: str = typer.Option(None, help=MODEL_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(16, help="Images per model batch (16: classify is usually given a few files; "
                                   "evaluate, which embeds a whole split once and caches it, uses 32)."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print results as CSV (path + one column per label)."),
) -> None:
    """Zero-shot probability of each finding per image, by the model's own scoring rule: a softmax
    over the finding's positive and negative prompt ensembles for CLIP-style models (CXR-CLIP /
    CheXzero style), the mean per-prompt sigmoid with the learnt bias for SigLIP-style ones. Not a
    diagnosis."""

    def go() -> Classification:
        from tqdm import tqdm

        from cxrtool.evaluate.classify import run_classification

        names = [s.strip() for s in labels.split(",") if s.strip()] if labels else None
        with tqdm(desc="classifying", unit="img", disable=as_json or as_csv, file=sys.stderr) as bar:
            return run_classification(paths, names, prompts, model, pick_device(device), batch_size, bar.update)

    result = run(go)
    rows = result.rows()
    if as_json:
        print_json({"labels": result.labels, "scoring": result.scoring, "images": rows,
                    "errors": [{"path": p, "reason": r} for p, r in result.errors]})
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=["path", *result.labels])
        writer.writeheader()
        writer.writerows(rows)
    else:
        _print_table(result)
    for path, reason in result.errors if not as_json else []:
        console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False)
    if not rows:
        raise typer.Exit(3 if not result.errors else 1)


def _print_table(result: Classification) -> None:
    from rich.table import Table

    table = Table(title=f"zero-shot probabilities ({len(result.paths)} images, {result.scoring} scoring)")
    table.add_column("path", overflow="fold", ratio=1, min_width=20)
    wide = len(result.labels) > WIDE
    for label in ["findings with p >= 0.5 (top 3)"] if wide else result.labels:
        table.add_column(label, overflow="fold")
    for path, probs in zip(result.paths, result.probabilities, strict=True):
        if wide:
            order = [j for j in probs.argsort()[::-1] if probs[j] >= THRESHOLD][:3]
            table.add_row(path, ", ".join(f"{result.labels[j]} {probs[j]:.2f}" for j in order) or "-")
        else:
            table.add_row(path, *(f"{p:.2f}" for p in probs))
    out.print(table)
