"""Laterality on every sided NIH image, by cross-fitting the default model's recipe.

The fixed held-out split (scripts/nih_split.py) has only 18 one-sided pneumothoraces and 22
one-sided effusions, so the default model's left-vs-right figures carry intervals some 0.6 wide.
This script scores all 60 / 100 of them, each by a model that never saw its patient:

* fold ``test``: the fixed held-out split, scored by the recipe's own model (for ``default``, the
  bundled model itself);
* folds ``a`` and ``b``: the other patients with boxes (``nih_512``), halved by patient hash;
  each is scored by a model trained with the recipe on every other patient (the held-out split,
  the other half and, for recipes trained on both NIH folders, every ``nih_512_extra`` patient),
  with its own 90/10 train/validate split for epoch selection.

Only ``nih_512`` has boxes, so the scored images are the same 60 / 100 for every recipe and the
recipes compare on one set. Recipes: ``default``, the shipped one (build_default_model's
``SHIPPED_RECIPE`` on both NIH folders, v5 since issue 28); ``v4``, the previous default (288 px,
flip pairs, ``nih_512`` only; its ``test`` fold is a saved copy of v4, runs/experiments/default_v4/model);
``v3_224px``, the same at 224 px; ``before``, the trainer before the laterality work
(train_experiments' ``full`` config: no sided image feature, no side negatives or side term,
no flips; its ``test`` fold is that experiment's model).

Per finding it prints the left-vs-right AUROC pooled over the three folds (cos(left X) - cos(right X),
left = 1; scores of different models are pooled as they are, which can only lower it), each fold's
own AUROC, and the top-50 side accuracy summed over the folds, all with patient-bootstrap 95 % CIs.
Same prompts and metrics as ``cxrtool evaluate`` (evaluate/laterality.py).

Models trained with flips write ``flip_pair`` vectors if their card says so (model/card.py: each
image beside its mirror image, each text beside its side-swapped twin); ``--embedding single|flip_pair``
scores the same models with the other vector mode, to show what the pairing adds.

Usage: cd scripts && python laterality_cv.py [--recipe default|v4|v3_224px|before] [--embedding single|flip_pair]
[--shared DIR] [--record] (default: two trainings of about an hour each on 2 free CPU cores; v4 two of 40
minutes; v3_224px two of 20 minutes, with runs/experiments/default_v3/model a full copy of v3; before: two
of 12 minutes, after the ``full`` experiment of train_experiments.py). A stopped run continues from its
fold's last checkpoint.
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
from build_default_model import RECIPE, SHIPPED_RECIPE, V4_COPY
from nih_split import NIH_FOLDERS, read_folder, v5_test_patients
from train_experiments import BASE, CONFIGS

from cxrtool.data.manifest import split_for_patient, write_manifest
from cxrtool.data.prompts import PromptBank
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
BOTH = tuple(NIH_FOLDERS)
RECIPES = {  # name: (training config, the model that scores the fixed held-out split, the folders it trains on)
    "default": ({**SHIPPED_RECIPE, "changed_only": False}, DEFAULT_MODEL_DIR, BOTH),
    "v4": ({**RECIPE, "changed_only": False}, V4_COPY, ("nih_512",)),
    "before": ({**BASE, **CONFIGS["full"]}, REPO / "runs" / "experiments" / "full" / "model", ("nih_512",)),
    # v3: the v4 recipe at 224 px; a full copy of v3 scores the held-out split
    "v3_224px": ({**RECIPE, "changed_only": False, "input_size": 224},
                 REPO / "runs" / "experiments" / "default_v3" / "model", ("nih_512",)),
}
SAVED_COPY = {  # how to make the held-out model of a past default: a commit that shipped it
    "v3_224px": "f246051",
    "v4": "a632b9f",  # any commit before v5 shipped
}
CV_SALT = "cxrtool-laterality-cv"
K = 50


def fold_of(patient: str, test_patients: set[str]) -> str:
    if patient in test_patients:
        return "test"
    return "a" if split_for_patient(patient, validate=0.0, test=0.5, salt=CV_SALT) == "test" else "b"


def fold_studies(studies: list, fold: str, test_patients: set[str]) -> list:
    """The fold's nih_512 studies (the folder with boxes), so every recipe scores and ranks the same pool."""
    return [s for s in studies if s.source == NIH_FOLDERS["nih_512"] and fold_of(s.patient_key, test_patients) == fold]


def fold_model(recipe: str, fold: str, studies: list, test_patients: set[str]) -> Path:
    """The recipe's own model for the held-out split; a retrain on all other patients for a and b."""
    config, held_out_model, _ = RECIPES[recipe]
    if fold == "test":
        if not (held_out_model / "model.json").is_file():
            how = (f"save the model of commit {SAVED_COPY[recipe]} there: `git worktree add /tmp/old "
                   f"{SAVED_COPY[recipe]}`, then load_model('/tmp/old/src/cxrtool/default_model') and "
                   "save_model_dir(model, that path)" if recipe in SAVED_COPY
                   else "run `python train_experiments.py --only full` first")
            raise SystemExit(f"{held_out_model} is missing: {how}")
        return held_out_model
    out = OUT / recipe / fold
    if (out / "model" / "model.json").is_file():
        return out / "model"
    scored = {s.patient_key for s in fold_studies(studies, fold, test_patients)}
    train_rows = [s for s in studies if s.patient_key not in scored]  # incl. their other folder's images
    manifest = write_manifest(train_rows, out / "train_manifest.parquet")
    logging.info("fold %s: training on %d studies (%d validate)", fold, len(train_rows),
                 sum(s.split == "validate" for s in train_rows))
    cfg = resolve_config(overrides=config)
    run_dir = out / "model.run"
    train(manifest, out / "model", cfg, run_dir=run_dir, resume=(run_dir / "checkpoints" / "last.pt").is_file())
    return out / "model"


def fold_scores(recipe: str, fold: str, studies: list, test_patients: set[str], bank: PromptBank,
                embedding: str | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per lateral finding: left/right cosines, side codes and patients of the fold's held-out rows
    (``embedding`` overrides the model card's vector mode: single or flip_pair)."""
    out = OUT / recipe / fold
    held = [copy.copy(s) for s in fold_studies(studies, fold, test_patients)]
    for s in held:
        s.split = "test"
    model = load_model(str(fold_model(recipe, fold, studies, test_patients)))
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
    # every patient's own train/validate hash (held-out patients too: they train the a and b retrains)
    studies = [s for folder in RECIPES[args.recipe][2] for s in read_folder(args.shared, folder)]
    test_patients = v5_test_patients(args.shared)  # on nih_512 patients, v4's held-out rule exactly
    bank = PromptBank.load()
    per_fold = {}
    for fold in ("test", "a", "b"):
        (OUT / args.recipe / fold).mkdir(parents=True, exist_ok=True)
        per_fold[fold] = fold_scores(args.recipe, fold, studies, test_patients, bank, args.embedding)
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
