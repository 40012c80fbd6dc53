"""`cxrtool classify PATH...`: zero-shot label probabilities per image."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import typer
from rich.table import Table
from tqdm import tqdm

from cxrtool.cli.common import console, out, pick_device, print_json, run
from cxrtool.evaluate.classification import THRESHOLD
from cxrtool.evaluate.classify import Classification, classify_images
from cxrtool.evaluate.zero_shot import label_prompt_sets, read_prompt_file
from cxrtool.model import load_model

WIDE = 6  # more labels than this: the table shows each image's top findings instead of every column


def classify_cmd(
    paths: list[Path] = typer.Argument(..., help="Image files, folders (searched recursively) or a workspace "
                                       "(its shards are classified without re-embedding)."),
    labels: str = typer.Option(None, help="Comma-separated labels (default: every label of the prompt bank, or "
                               "of --prompts). Synonyms work: effusion = Pleural Effusion."),
    prompts: Path = typer.Option(None, help='JSON of your own sentences: {"labels": {"Edema": {"positive": [...], '
                                 '"negative": [...]}}}.'),
    model: str = typer.Option(None, help="Model directory or hub name, e.g. google/medsiglip-448 (env "
                              "CXRTOOL_MODEL; default: the bundled model; see `cxrtool models`)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1 ... or auto."),
    batch_size: int = typer.Option(16, help="Images per model batch."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print results as CSV (path + one column per label)."),
) -> None:
    """Zero-shot probability of each finding per image, by the model's own scoring rule: a softmax
    over the finding's positive and negative prompt ensembles for CLIP-style models (CXR-CLIP /
    CheXzero style), the mean per-prompt sigmoid with the learnt bias for SigLIP-style ones. Not a
    diagnosis."""

    def go() -> Classification:
        custom = read_prompt_file(prompts) if prompts else None
        names = [s.strip() for s in labels.split(",") if s.strip()] if labels else None
        mdl = load_model(model, device=pick_device(device))
        sets = label_prompt_sets(names, custom=custom)
        with tqdm(desc="classifying", unit="img", disable=as_json or as_csv, file=sys.stderr) as bar:
            return classify_images(mdl, paths, sets, batch_size=batch_size, progress=bar.update)

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
