"""`cxrtool evaluate MANIFEST` (or `--shards WORKSPACE --labels-csv FILE`)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from tqdm import tqdm

from cxrtool.cli.common import console, out, pick_device, print_json, run
from cxrtool.errors import ManifestError
from cxrtool.evaluate.bootstrap import N_RESAMPLES
from cxrtool.evaluate.classification import THRESHOLD
from cxrtool.evaluate.eval_set import embed_eval_set, eval_set_from_manifest, eval_set_from_shards
from cxrtool.evaluate.laterality import LATERALITY_KS, record_in_card
from cxrtool.evaluate.outputs import to_markdown, write_outputs
from cxrtool.evaluate.run import EvalOptions, EvalResult, evaluate_model, pick_split
from cxrtool.evaluate.zero_shot import read_prompt_file
from cxrtool.model import load_model
from cxrtool.model.directory import DEFAULT_MODEL_DIR, resolve_model


def evaluate_cmd(
    manifest: Path = typer.Argument(None, help="Study manifest (cxrtool prepare) with labels, splits and text."),
    shards: Path = typer.Option(None, help="Instead of a manifest: a workspace (or shards folder) from "
                                "`cxrtool embed` ..."),
    labels_csv: Path = typer.Option(None, help="... with this CSV: 'path' (archive-relative) + 1/0/-1/blank label "
                                    "columns; optional patient_id, split, text, sex, age, view."),
    out_dir: Path = typer.Option(Path("cxrtool-eval"), "--out", help="Folder for summary.json, report.md, "
                                 "predictions.csv, roc.png, recall_at_k.png and the embedding cache."),
    split: str = typer.Option("test", help="Split to score (validate if the manifest has no test split)."),
    labels: str = typer.Option(None, help="Comma-separated labels to score (default: every label with positives "
                               "and negatives in the split)."),
    prompts: Path = typer.Option(None, help="JSON of your own positive/negative sentences per label."),
    grid: Path = typer.Option(None, help="Multi-class prompt grid JSON (default: the bundled 5x200-style grid)."),
    threshold: float = typer.Option(THRESHOLD, help="Probability threshold for accuracy and F1."),
    bootstrap: int = typer.Option(N_RESAMPLES, help="Bootstrap resamples (by patient) for the 95% CIs."),
    seed: int = typer.Option(0, help="Seed for the bootstrap and the probe's subsamples."),
    probe: bool = typer.Option(True, help="Fit the linear probe on the train split (1%, 10%, 100%)."),
    laterality_k: str = typer.Option(",".join(map(str, LATERALITY_KS)), help="Comma-separated k for the top-k side "
                                     "accuracy of 'left X' / 'right X' queries (when the data has sides)."),
    cache: Path = typer.Option(None, help="Embedding cache folder (default: OUT/cache)."),
    model: str = typer.Option(None, help="Model directory or hub name, e.g. google/medsiglip-448 (env "
                              "CXRTOOL_MODEL; default: the bundled model; see `cxrtool models`)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1 ... or auto."),
    batch_size: int = typer.Option(32, help="Images per model batch."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of Markdown."),
    record_sides: bool = typer.Option(False, "--record-sides", help="Write the left-vs-right AUROCs into the model "
                                      "directory's model.json, so search warns about sides it does not tell."),
) -> None:
    """Measure a model: zero-shot AUROC with bootstrap CIs, accuracy/F1, 5x200-style multi-class accuracy,
    image<->text retrieval, a linear probe, subgroup breakdowns and, where the data has sides (manifest
    `sides`, labels-CSV `bbox_json`), left-vs-right laterality; writes JSON, Markdown and plots."""

    def bar(desc: str, total: int):
        b = tqdm(total=total, desc=desc, unit="it", file=sys.stderr, disable=as_json, leave=False)
        return b.update

    def go() -> tuple[EvalResult, dict[str, Path], list[tuple[str, str]]]:
        if (manifest is None) == (shards is None) or (shards is not None and labels_csv is None):
            raise ManifestError("give a MANIFEST, or --shards WORKSPACE with --labels-csv FILE")
        try:
            ks = tuple(int(k) for k in laterality_k.split(",") if k.strip())
        except ValueError:
            ks = ()
        if not ks or min(ks) < 1:
            raise ManifestError(f"--laterality-k {laterality_k!r}: expected positive integers",
                                "e.g. --laterality-k 10,50")
        target = resolve_model(model) if record_sides else None
        if record_sides and (not isinstance(target, Path) or target.resolve() == DEFAULT_MODEL_DIR.resolve()):
            raise ManifestError("--record-sides writes into a model directory of your own, not the bundled model "
                                "or a hub download", "copy the model directory (cp -r) and pass --model COPY")
        es = eval_set_from_manifest(manifest) if manifest else eval_set_from_shards(shards, labels_csv)
        if not probe:
            es = es.subset(pick_split(es, split)[1])
        mdl = load_model(model, device=pick_device(device))
        failed = embed_eval_set(mdl, es, cache or out_dir / "cache", batch_size, bar("embedding", len(es)))
        options = EvalOptions(split=split, labels=[s.strip() for s in labels.split(",")] if labels else None,
                              custom_prompts=read_prompt_file(prompts) if prompts else None,
                              grid_path=str(grid) if grid else None, threshold=threshold, n_resamples=bootstrap,
                              seed=seed, probe_fractions=(0.01, 0.1, 1.0) if probe else (), laterality_ks=ks)
        result = evaluate_model(mdl, es, options, progress=bar)
        result.summary["data"]["input"] = str(manifest or shards)
        result.summary["data"]["undecodable_images"] = len(failed)
        if record_sides and result.summary.get("laterality"):
            record_in_card(target, result.summary["laterality"],
                           f"cxrtool evaluate, {Path(str(manifest or shards)).name}, split {split}")
        return result, write_outputs(result, out_dir), failed

    result, paths, failed = run(go)
    if record_sides:
        console.print("recorded the measured sides in the model's model.json" if result.summary.get("laterality")
                      else "no one-sided findings in this data: nothing recorded", highlight=False)
    for path, reason in failed[:10]:
        console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False)
    if as_json:
        print_json(result.summary)
    else:
        out.print(to_markdown(result.summary), markup=False, highlight=False)
        console.print("wrote " + ", ".join(str(p) for p in paths.values()), highlight=False)
