"""Laterality on every sided NIH image, by cross-fitting the default model's recipe.

The fixed held-out split (scripts/nih_split.py) has only 18 one-sided pneumothoraces and 22
one-sided effusions, so the default model's left-vs-right figures carry intervals some 0.6 wide.
This script scores all 60 / 100 of them, each by a model that never saw its patient:

* fold ``test``: the fixed held-out split, scored by the bundled default model itself;
* folds ``a`` and ``b``: the default model's training patients, halved by patient hash; each is
  scored by a model trained with the default model's exact recipe (build_default_model.RECIPE)
  on every other patient (the held-out split and the other half), with its own 90/10
  train/validate split for epoch selection.

``--recipe before`` does the same for the trainer before the laterality work (train_experiments'
``full`` config: no sided image feature, no side negatives or side term, no flips; its ``test``
fold is that experiment's model, ``runs/experiments/full/model``, trained on the same patients as
the default model), so before and after are compared on the same 60 / 100 images.

Per finding it prints the left-vs-right AUROC pooled over the three folds (cos(left X) - cos(right X),
left = 1; scores of different models are pooled as they are, which can only lower it), each fold's
own AUROC, and the top-50 side accuracy summed over the folds, all with patient-bootstrap 95 % CIs.
Same prompts and metrics as ``cxrtool evaluate`` (evaluate/laterality.py).

Models trained with flips (the default recipe) write ``flip_pair`` vectors (model/card.py: each
image beside its mirror image, each text beside its side-swapped twin); ``--embedding single``
scores the same models with plain vectors, to show what the pairing adds.

Usage: cd scripts && python laterality_cv.py [--recipe default|v3_224px|before] [--embedding single|flip_pair]
[--shared DIR] [--record] (default, the 288-px recipe: two 40-minute trainings on 2 CPU cores; v3_224px: two of
20 minutes, and runs/experiments/default_v3/model, a full copy of v3, must exist; before: two of
12 minutes, and the ``full`` experiment of train_experiments.py must exist)
Results: runs/laterality_cv/<recipe>/<fold>/ (model, run folder) and runs/laterality_cv/<recipe>/summary.json
(summary-<embedding>.json with --embedding)
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import subprocess
from pathlib import Path

import numpy as np
from build_default_model import RECIPE
from build_sample_data import FINDINGS
from nih_split import is_test_patient
from train_experiments import BASE, CONFIGS

from cxrtool.data.manifest import split_for_patient, write_manifest
from cxrtool.data.prompts import PromptBank
from cxrtool.data.sources.csv_table import read_csv_studies
from cxrtool.evaluate.bootstrap import bootstrap_ci
from cxrtool.evaluate.eval_set import embed_eval_set, eval_set_from_manifest
from cxrtool.evaluate.laterality import (
    lateral_labels,
    left_right_auroc,
    pooled_counts,
    record_in_card,
    side_scores,
    topk_side_counts,
)
from cxrtool.index.query import SIDE_CONTRAST
from cxrtool.model import DEFAULT_MODEL_DIR, load_model
from cxrtool.train import resolve_config, train

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "runs" / "laterality_cv"
RECIPES = {  # name: (training config, the model that scores the fixed held-out split)
    "default": ({**RECIPE, "changed_only": False}, DEFAULT_MODEL_DIR),
    "before": ({**BASE, **CONFIGS["full"]}, REPO / "runs" / "experiments" / "full" / "model"),
    # the previous default (v3): the same recipe at 224 px; a full copy of v3 scores the held-out split
    "v3_224px": ({**RECIPE, "changed_only": False, "input_size": 224},
                 REPO / "runs" / "experiments" / "default_v3" / "model"),
}
CV_SALT = "cxrtool-laterality-cv"
K = 50


def fold_of(patient: str) -> str:
    if is_test_patient(patient):
        return "test"
    return "a" if split_for_patient(patient, validate=0.0, test=0.5, salt=CV_SALT) == "test" else "b"


def fold_model(recipe: str, fold: str, studies: list) -> Path:
    """The recipe's own model for the held-out split; a retrain on all other patients for a and b."""
    config, held_out_model = RECIPES[recipe]
    if fold == "test":
        if not (held_out_model / "model.json").is_file():
            how = ("save the v3 model of commit f246051 there: `git worktree add /tmp/v3 f246051`, then "
                   "load_model('/tmp/v3/src/cxrtool/default_model') and save_model_dir(model, that path)"
                   if recipe == "v3_224px" else "run `python train_experiments.py --only full` first")
            raise SystemExit(f"{held_out_model} is missing: {how}")
        return held_out_model
    out = OUT / recipe / fold
    if (out / "model" / "model.json").is_file():
        return out / "model"
    train_rows = [s for s in studies if fold_of(s.patient_key) != fold]
    manifest = write_manifest(train_rows, out / "train_manifest.parquet")
    logging.info("fold %s: training on %d studies (%d validate)", fold, len(train_rows),
                 sum(s.split == "validate" for s in train_rows))
    cfg = resolve_config(overrides=config)
    run_dir = out / "model.run"
    train(manifest, out / "model", cfg, run_dir=run_dir, resume=(run_dir / "checkpoints" / "last.pt").is_file())
    return out / "model"


def fold_scores(recipe: str, fold: str, studies: list, bank: PromptBank,
                embedding: str | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per lateral finding: left/right cosines, side codes and patients of the fold's held-out rows
    (``embedding`` overrides the model card's vector mode: single or flip_pair)."""
    out = OUT / recipe / fold
    held = [copy.copy(s) for s in studies if fold_of(s.patient_key) == fold]
    for s in held:
        s.split = "test"
    model = load_model(str(fold_model(recipe, fold, studies)))
    if embedding:
        model.card.embedding = embedding
    es = eval_set_from_manifest(write_manifest(held, out / "held_out_manifest.parquet"))
    embed_eval_set(model, es, cache_dir=out / "eval_cache")
    scores = {}
    for name in lateral_labels(es, bank):
        sl, sr, codes = side_scores(model, es, name, bank)
        scores[name] = {"left": sl, "right": sr, "codes": codes, "patients": es.patients.astype(str),
                        "fold": np.full(len(codes), fold)}
    return scores


def pooled_topk_counts(sl: np.ndarray, sr: np.ndarray, codes: np.ndarray, fold: np.ndarray) -> tuple[int, int]:
    """(correct, considered) in the top k, each fold ranked on its own (as its model would serve it), summed."""
    correct = considered = 0
    for f in np.unique(fold):
        mine = fold == f
        fold_correct, fold_considered = pooled_counts(topk_side_counts(sl[mine], sr[mine], codes[mine], K))
        correct += fold_correct
        considered += fold_considered
    return correct, considered


def pooled_topk(sl: np.ndarray, sr: np.ndarray, codes: np.ndarray, fold: np.ndarray) -> float:
    """Top-k side accuracy of :func:`pooled_topk_counts`; NaN if no one-sided image is in any top k."""
    correct, considered = pooled_topk_counts(sl, sr, codes, fold)
    return correct / considered if considered else float("nan")


def summarise(per_fold: dict[str, dict]) -> list[dict]:
    rows = []
    for name in sorted({n for f in per_fold.values() for n in f}):
        parts = [f[name] for f in per_fold.values() if name in f]
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        one = cat["codes"] != 0
        row = {"label": name, "one_sided": int(one.sum()), "left": int((cat["codes"] == 1).sum()),
               "right": int((cat["codes"] == -1).sum())}
        row["auroc_pooled"] = bootstrap_ci(left_right_auroc, cat["left"][one], cat["right"][one], cat["codes"][one],
                                           groups=cat["patients"][one]).to_dict()
        row["auroc_by_fold"] = {}
        for fold, f in per_fold.items():
            if name in f:
                p = f[name]
                o = p["codes"] != 0
                row["auroc_by_fold"][fold] = {"one_sided": int(o.sum()), **bootstrap_ci(
                    left_right_auroc, p["left"][o], p["right"][o], p["codes"][o], groups=p["patients"][o]).to_dict()}
        acc = bootstrap_ci(pooled_topk, cat["left"], cat["right"], cat["codes"], cat["fold"], groups=cat["patients"])
        correct, considered = pooled_topk_counts(cat["left"], cat["right"], cat["codes"], cat["fold"])
        row[f"top{K}_accuracy_pooled"] = {**acc.to_dict(), "correct": correct, "considered": considered}
        rows.append(row)
    return rows


def fmt(ci: dict) -> str:
    return f"{ci['value']:.2f} [{ci['low']:.2f}, {ci['high']:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--embedding", choices=["single", "flip_pair"], default=None,
                    help="score with this vector mode instead of the one in each model's card")
    ap.add_argument("--record", action="store_true",
                    help="write the pooled left-vs-right AUROCs into the held-out model's card (model.json "
                         "'laterality'), which search reads to warn about sides the model does not tell")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    studies = read_csv_studies(args.shared / "nih_512" / "labels.csv", patient_col="patient_id", view_col="view",
                               label_cols=FINDINGS, source="nih-chestxray14")
    bank = PromptBank.load()
    per_fold = {}
    for fold in ("test", "a", "b"):
        (OUT / args.recipe / fold).mkdir(parents=True, exist_ok=True)
        per_fold[fold] = fold_scores(args.recipe, fold, studies, bank, args.embedding)
    rows = summarise(per_fold)
    name = f"summary-{args.embedding}.json" if args.embedding else "summary.json"
    # what produced the figures: a summary written by a process that imported older query code is
    # otherwise indistinguishable from a current one (v4's first top-50 figures were such a one)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    (OUT / args.recipe / name).write_text(json.dumps({"recipe": args.recipe, "embedding": args.embedding or "card",
                                                      "k": K, "side_contrast": SIDE_CONTRAST, "commit": commit,
                                                      "labels": rows}, indent=2))
    if args.record:
        held_out_model = RECIPES[args.recipe][1]
        record_in_card(held_out_model, {"labels": [{**r, "auroc_left_vs_right": r["auroc_pooled"]} for r in rows]},
                       "cross-fitted on NIH ChestX-ray14 boxes, scripts/laterality_cv.py")
        print(f"recorded in {held_out_model / 'model.json'}")
    print(f"recipe: {args.recipe}, embedding: {args.embedding or 'as each card says'}, "
          f"side contrast of sided queries: {SIDE_CONTRAST:g}, commit {commit}")
    print(f"| finding | one-sided (L/R) | left-vs-right AUROC, pooled | by fold: test (the shipped split) / a / b "
          f"| top-{K} side accuracy, pooled (correct/considered) |")
    print("|---|---|---|---|---|")
    for r in rows:
        top = r[f"top{K}_accuracy_pooled"]
        folds = " / ".join(f"{fmt(v)} (n={v['one_sided']})" for v in r["auroc_by_fold"].values())
        print(f"| {r['label']} | {r['one_sided']} ({r['left']}/{r['right']}) | {fmt(r['auroc_pooled'])} | {folds} "
              f"| {fmt(top)} ({top['correct']}/{top['considered']}) |")


if __name__ == "__main__":
    main()
