"""Training experiments on the open NIH data: before/after, the objective's ablations, and the default model.

Split (patient-disjoint, fixed; scripts/nih_split.py): the held-out test patients are the
sample_data patients plus a further hash bucket of NIH patients, 346 of the 1,228 images; no run
ever sees them in training or model selection. The remaining patients are split 90/10 into
train/validate by patient hash.

Each configuration trains from the same pretrained towers (ImageNet EfficientNet-Lite0, frozen
MiniLM-L6 unless the config unfreezes it) and is scored on the test patients with the same code
as ``cxrtool evaluate``: zero-shot AUROC (+ patient-bootstrap 95% CI) for the six issue labels,
text→image lift@50 (precision@50 ÷ base rate), text→image Recall@K, and laterality.

Configs named ``recipe_*`` start from the default model's own recipe (build_default_model.RECIPE)
and change one thing each; the others start from ``BASE`` (the 4-epoch trainer ablations).

Usage: python scripts/train_experiments.py [--only NAME,...] [--epochs N] [--shared DIR]
Results: runs/experiments/<name>/ (model, run folder, summary.json) and runs/experiments/results.md
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from build_default_model import RECIPE
from nih_split import nih_studies

from cxrtool.data.manifest import write_manifest
from cxrtool.data.prompts import PromptBank
from cxrtool.evaluate import EvalOptions, run_evaluation
from cxrtool.index.query import text_query_vector
from cxrtool.model import DEFAULT_MODEL_DIR, create_model, save_model_dir
from cxrtool.train import resolve_config, train

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "runs" / "experiments"
RESCORE = False
ISSUE_LABELS = ["Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion", "Pneumonia", "Pneumothorax"]
LIFT_QUERIES = {"Pleural Effusion": "pleural effusion", "Cardiomegaly": "cardiomegaly",
                "Pneumothorax": "pneumothorax"}

BASE = {"freeze_text": True, "epochs": 4, "batch_size": 32, "lr": 2e-4, "max_negatives": 2, "seed": 0,
        "threads": 2, "checkpoint_every": 50, "log_every": 5}
CONFIGS: dict[str, dict] = {
    "full": {},  # CLIP + ICL 1.0 + TCL 0.5, false negatives removed
    "clip_only": {"icl_weight": 0.0, "tcl_weight": 0.0},
    "no_false_negative_removal": {"false_negatives": False},
    "side_negatives": {"side_negatives": True},
    # laterality levers together: side-keeping image feature, side-swapped hard negatives, flips with swapped text
    "laterality": {"image_feature": "halves", "side_negatives": True, "hflip_prob": 0.5},
}
# Ablations of the default model's own recipe (scripts/build_default_model.py RECIPE): each changes one thing.
# The side-weight and text runs were made when the recipe was v3's (224 px); recipe_288px was the
# change that became v4 (the bundled model is that run's model), recipe_224px is v3's resolution.
RECIPE_CONFIGS: dict[str, dict] = {
    "recipe_side_weight_1": {"side_weight": 1.0, "input_size": 224},
    "recipe_side_weight_10": {"side_weight": 10.0, "input_size": 224},
    "recipe_text_top2": {"freeze_text": False, "freeze_text_layers": 4, "text_lr": 5e-5, "input_size": 224},
    "recipe_288px": {"input_size": 288},
    "recipe_224px": {"input_size": 224},
}


def precision_at(scores: np.ndarray, positive: np.ndarray, k: int = 50) -> float:
    """Fraction of positives among the k best-scored rows (ties kept in row order)."""
    return float(positive[np.argsort(-scores, kind="mergesort")[:k]].mean())


def build_manifests(shared: Path) -> tuple[Path, Path]:
    rest, test = nih_studies(shared)
    OUT.mkdir(parents=True, exist_ok=True)
    train_manifest = write_manifest(rest, OUT / "train_manifest.parquet")
    test_manifest = write_manifest(test, OUT / "test_manifest.parquet")
    logging.info("train/validate %d studies (%d validate), test %d studies (%d patients)", len(rest),
                 sum(s.split == "validate" for s in rest), len(test), len({s.patient_key for s in test}))
    return train_manifest, test_manifest


def score(model_dir: Path, test_manifest: Path, cache: Path) -> dict:
    """`cxrtool evaluate`'s figures (the same chain) plus lift@50 of searches naming a finding."""
    ev = run_evaluation(test_manifest, model=model_dir, cache_dir=cache,
                        options=EvalOptions(split="test", labels=ISSUE_LABELS, probe_fractions=()))
    model, es, s = ev.model, ev.eval_set, ev.summary
    rows = {r["label"]: r["auroc"] for r in s["zero_shot"]["labels"]}
    lifts = {}
    bank = PromptBank.load()
    for label, query in LIFT_QUERIES.items():
        positive = np.nan_to_num(es.labels[label]).astype(bool)
        row = {"query": query, "positives": int(positive.sum()), "base_rate": round(float(positive.mean()), 4)}
        # as `cxrtool search` ranks (the query expanded with the bank's sentences), and as typed (--exact)
        for key, vector in (("", text_query_vector(model, query, bank)),
                            ("_exact", text_query_vector(model, query, bank, expand=False))):
            precision = precision_at(es.vectors @ vector, positive)
            row[f"precision@50{key}"] = round(precision, 4)
            row[f"lift@50{key}"] = round(precision / positive.mean(), 2)
        lifts[label] = row
    lat = s.get("laterality") or {}
    return {"mean_auroc": s["zero_shot"]["mean_auroc"], "auroc": rows, "lift": lifts,
            "text_to_image": (s.get("retrieval") or {}).get("text_to_image"), "laterality": lat,
            "images": s["data"]["images"], "patients": s["data"]["patients"]}


def run_config(name: str, overrides: dict, train_manifest: Path, test_manifest: Path) -> dict:
    out = OUT / name
    summary_path = out / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if RESCORE:
            model_dir = DEFAULT_MODEL_DIR if name == "default" else out / "model"
            summary.update(score(model_dir, test_manifest, out / "eval_cache"))
            summary_path.write_text(json.dumps(summary, indent=2))
        return summary
    t0 = time.time()
    if name == "default":  # the bundled model as built by `make default-model`: scored only
        card = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())
        summary = {"name": name, "overrides": card["provenance"].get("train_config", {}),
                   "train_seconds": sum(h.get("seconds", 0) for h in card["provenance"].get("history", [])),
                   "history": card["provenance"].get("history", []),
                   **score(DEFAULT_MODEL_DIR, test_manifest, out / "eval_cache")}
        out.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2))
        return summary
    base = {**RECIPE, "changed_only": False} if name.startswith("recipe_") else BASE
    if name == "untrained":
        cfg = resolve_config(overrides={**base, **overrides})
        model = create_model(cfg.image_model, cfg.text_model, cfg.image_weights, embed_dim=cfg.embed_dim)
        save_model_dir(model, out / "model")
        history = []
    else:
        cfg = resolve_config(overrides={**base, **overrides})
        resume = (out / "model.run" / "checkpoints" / "last.pt").is_file()
        result = train(train_manifest, out / "model", cfg, run_dir=out / "model.run", resume=resume)
        history = result.history
    took = time.time() - t0
    summary = {"name": name, "overrides": overrides, "train_seconds": round(took, 1), "history": history,
               **score(out / "model", test_manifest, out / "eval_cache")}
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def table(results: list[dict]) -> str:
    head = ("| run | mean AUROC (6 labels) | " + " | ".join(ISSUE_LABELS) + " | lift@50 effusion / cardiomegaly / "
            "pneumothorax, as searched (typed exactly) | t→i R@10 | train min |")
    lines = [head, "|" + "---|" * (len(ISSUE_LABELS) + 5)]
    for r in results:
        cells = []
        for label in ISSUE_LABELS:
            a = r["auroc"].get(label)
            cells.append(f"{a['value']:.3f} [{a['low']:.2f}, {a['high']:.2f}]" if a else "–")
        lifts = " / ".join(f"{r['lift'][k]['lift@50']} ({r['lift'][k].get('lift@50_exact', '–')})"
                           for k in LIFT_QUERIES)
        t2i = (r.get("text_to_image") or {}).get("recall@10")
        lines.append(f"| {r['name']} | {r['mean_auroc']:.3f} | " + " | ".join(cells)
                     + f" | {lifts} | {t2i} | {r['train_seconds'] / 60:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--rescore", action="store_true", help="score finished runs again (after a scoring change)")
    ap.add_argument("--set", action="append", default=[], help="NAME:KEY=VALUE adds a config override")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.epochs:
        BASE["epochs"] = args.epochs
    global RESCORE
    RESCORE = args.rescore
    configs = {"untrained": {}, **CONFIGS, "default": {}, **RECIPE_CONFIGS}
    for item in args.set:
        name, kv = item.split(":", 1)
        key, value = kv.split("=", 1)
        try:
            configs.setdefault(name, {})[key] = json.loads(value)
        except json.JSONDecodeError:
            configs.setdefault(name, {})[key] = value
    wanted = args.only.split(",") if args.only else list(configs)
    train_manifest, test_manifest = build_manifests(args.shared)
    results = []
    for name in wanted:
        logging.info("=== %s %s", name, configs[name])
        results.append(run_config(name, configs[name], train_manifest, test_manifest))
        logging.info("%s: mean AUROC %.3f, lift %s", name, results[-1]["mean_auroc"],
                     {k: v["lift@50"] for k, v in results[-1]["lift"].items()})
        logging.info("%s laterality: %s", name, {k: (v.get("auroc") or {}).get("value") if isinstance(v, dict) else v
                                                for k, v in (results[-1].get("laterality") or {}).items()})
    (OUT / "results.md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
