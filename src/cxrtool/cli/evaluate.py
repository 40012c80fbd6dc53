"""`cxrtool evaluate MANIFEST` (or `--shards WORKSPACE --labels-csv FILE`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cxrtool.cli.common import DEVICE_HELP, MODEL_HELP, console, out, pick_device, print_json, run
from cxrtool.constants import LATERALITY_KS, N_RESAMPLES, THRESHOLD
from cxrtool.errors import ManifestError

if TYPE_CHECKING:
    from cxrtool.evaluate.pipeline import Evaluation


def _ks(laterality_k: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in laterality_k.split(",") if k.strip())
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise ManifestError(f"--laterality-k {laterality_k!r}: expected positive integers", "e.g. --laterality-k 10,50")
    return ks


def evaluate_cmd(
    manifest: Path = typer.Argument(None, help="Study manifest (cxrtool prepare) with labels, splits and text."),
    shards: Path = typer.Option(None, help="Instead of a manifest: a workspace (or shards folder) from "
                                "`cxrtool embed` ..."),
    labels_csv: Path = typer.Option(None, help="... with this CSV: 'path' (archive-relative) + 1/0/-1/blank label "
                                    "columns; optional patient_id, split, text (or report), sex, age, view, "
                                    "bbox_json."),
    out_dir: Path = typer.Option(Path("cxrtool-eval"), "--out", "-o", help="Folder for summary.json, report.md, "
                                 "predictions.csv, roc.png, recall_at_k.png and the embedding cache."),
    split: str = typer.Option("test", help="Split to score (validate if the manifest has no test split)."),
    labels: str = typer.Option(None, help="Comma-separated labels to score (default: every label with positives "
                               "and negatives in the split)."),
    prompts: Path = typer.Option(None, help="JSON of your own positive/negative sentences per label."),
    grid: Path = typer.Option(None, help="Multi-class prompt grid JSON (default: the bundled 5x200-style grid)."),
    threshold: float = typer.Option(THRESHOLD, help="Probability threshold for accuracy and F1."),
    bootstrap: int = typer.Option(N_RESAMPLES, help="Bootstrap resamples (by patient) for the 95% CIs."),
    seed: int = typer.Option(0, help="Seed for the bootstrap and the probe's subsamples."),
    probe: bool = typer.Option(True, help="Fit the linear probe on the train split (1%, 10%, 100%); --no-probe "
                               "embeds only the scored split."),
    laterality_k: str = typer.Option(",".join(map(str, LATERALITY_KS)), help="Comma-separated k for the top-k side "
                                     "accuracy of 'left X' / 'right X' queries (when the data has sides)."),
    cache: Path = typer.Option(None, help="Embedding cache folder (default: OUT/cache)."),
    model: str = typer.Option(None, help=MODEL_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(32, help="Images per model batch (32: a whole split is embedded once and cached; "
                                   "classify, usually given a few files, uses 16)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of Markdown."),
    record_sides: bool = typer.Option(False, "--record-sides", help="Write the left-vs-right AUROCs into the model "
                                      "directory's model.json, so search warns about sides it does not tell."),
) -> None:
    """Measure a model: zero-shot AUROC with bootstrap CIs, accuracy/F1, 5x200-style multi-class accuracy,
    image<->text retrieval, a linear probe, subgroup breakdowns and, where the data has sides (manifest
    `sides`, labels-CSV `bbox_json`), left-vs-right laterality; writes JSON, Markdown and plots."""

    def bar(desc: str, total: int):
        from tqdm import tqdm

        b = tqdm(total=total, desc=desc, unit="it", file=sys.stderr, disable=as_json, leave=False)
        return b.update

    def go() -> Evaluation:
        from cxrtool.evaluate.pipeline import run_evaluation
        from cxrtool.evaluate.run import EvalOptions

        options = EvalOptions(split=split, labels=[s.strip() for s in labels.split(",")] if labels else None,
                              grid_path=str(grid) if grid else None, threshold=threshold, n_resamples=bootstrap,
                              seed=seed, probe_fractions=(0.01, 0.1, 1.0) if probe else (),
                              laterality_ks=_ks(laterality_k))
        return run_evaluation(manifest, shards=shards, labels_csv=labels_csv, model=model, options=options,
                              prompts_file=prompts, device=pick_device(device), batch_size=batch_size,
                              cache_dir=cache, out_dir=out_dir, record_sides=record_sides, progress=bar)

    ev = run(go)
    summary = ev.result.summary
    if record_sides:
        console.print("recorded the measured sides in the model's model.json" if summary.get("laterality")
                      else "no one-sided findings in this data: nothing recorded", highlight=False)
    for path, reason in ev.failed[:10]:
        console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False)
    if as_json:
        print_json(summary)
    else:
        from cxrtool.evaluate.outputs import to_markdown

        out.print(to_markdown(summary), markup=False, highlight=False)
        console.print("wrote " + ", ".join(str(p) for p in ev.outputs.values()), highlight=False)
