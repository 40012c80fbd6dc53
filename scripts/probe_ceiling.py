"""How far zero-shot is from what the image embeddings can carry: a supervised linear probe per label.

Issue 12's target is a zero-shot mean AUROC of 0.75 on the held-out NIH patients. This script puts
that next to a *supervised* logistic regression fitted on the same model's image embeddings with
the training patients' labels (`cxrtool evaluate`'s own probe: standardise + L2 logistic
regression, C by 3-fold cross-validated AUROC on the training rows only, never on the test
images). If even the supervised probe sits near or below the target, prompts and text-tower
changes cannot close the gap: the image embedding itself must get better (more data, a stronger
image tower).

Usage: cd scripts && python probe_ceiling.py [MODEL_DIR ...]
  default: the untrained towers (ImageNet EfficientNet-Lite0 features, random projection) and the
  bundled default model. Needs the shared open data (../shared/data); the split is nih_split's.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from nih_split import nih_studies
from train_experiments import ISSUE_LABELS, LIFT_QUERIES, precision_at

from cxrtool.data.manifest import write_manifest
from cxrtool.evaluate import EvalOptions, run_evaluation
from cxrtool.evaluate.probe import fit_probe
from cxrtool.model import DEFAULT_MODEL_DIR, load_model

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "runs" / "probe_ceiling"
LIFT_LABELS = list(LIFT_QUERIES)


def probe_scores(es, label: str) -> tuple[np.ndarray, np.ndarray]:
    """The supervised probe's scores of the test images (fitted on the train images only) and their positives."""
    train, test = es.subset(es.splits == "train"), es.subset(es.splits == "test")
    y_train = np.nan_to_num(train.labels[label]) == 1
    y_test = np.nan_to_num(test.labels[label]) == 1
    return fit_probe(train.vectors, y_train.astype(int)).predict_proba(test.vectors)[:, 1], y_test


def probe_lift(es, label: str, k: int = 50) -> float:
    """lift@k (precision@k ÷ base rate) of the supervised probe's ranking of the test images."""
    scores, y_test = probe_scores(es, label)
    return round(precision_at(scores, y_test, k) / y_test.mean(), 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", type=Path,
                    default=[REPO / "runs" / "experiments" / "untrained" / "model", DEFAULT_MODEL_DIR])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rest, test = nih_studies(args.shared)
    for s in rest:  # the probe fits on split "train": the validation patients are training patients too
        s.split = "train"
    manifest = write_manifest(rest + test, OUT / "manifest.parquet")
    rows = []
    for model_dir in args.models:
        model = load_model(str(model_dir))  # loaded first: its fingerprint names the cache folder
        ev = run_evaluation(manifest, model=model, cache_dir=OUT / "cache" / model.card.fingerprint.replace(":", "_"),
                            options=EvalOptions(split="test", labels=ISSUE_LABELS, probe_fractions=(1.0,)))
        es, s = ev.eval_set, ev.summary
        probe = {r["label"]: r["auroc"] for r in s["linear_probe"]["rows"] if r.get("auroc") is not None}
        zero = {r["label"]: r["auroc"]["value"] for r in s["zero_shot"]["labels"]}
        row = {"model": str(model_dir), "zero_shot_mean": s["zero_shot"]["mean_auroc"],
               "probe_mean": round(sum(probe.values()) / len(probe), 4), "zero_shot": zero, "probe": probe,
               "probe_lift@50": {k: probe_lift(es, k) for k in LIFT_LABELS},
               "train_images": int((es.splits == "train").sum()), "test_images": int((es.splits == "test").sum())}
        rows.append(row)
        logging.info("%s", row)
    (OUT / "results.json").write_text(json.dumps(rows, indent=2))
    print("| model | zero-shot mean AUROC | supervised linear probe mean AUROC | " + " | ".join(ISSUE_LABELS)
          + " | probe lift@50 " + " / ".join(LIFT_LABELS) + " |")
    print("|---|---|---|" + "---|" * (len(ISSUE_LABELS) + 1))
    for r in rows:
        cells = " | ".join(f"{r['zero_shot'].get(k, float('nan')):.3f} / {r['probe'].get(k, float('nan')):.3f}"
                           for k in ISSUE_LABELS)
        name = Path(r["model"]).parent.name if Path(r["model"]).name == "model" else Path(r["model"]).name
        lifts = " / ".join(str(r["probe_lift@50"][k]) for k in LIFT_LABELS)
        print(f"| {name} | {r['zero_shot_mean']:.3f} | {r['probe_mean']:.3f} | {cells} | {lifts} |")


if __name__ == "__main__":
    main()
