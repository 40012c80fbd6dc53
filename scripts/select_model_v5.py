"""Choose the v5 default among the candidates of build_model_v5.py, by the rule of docs/model-v5.md.

Only the validation patients of nih_split.v5_studies are read (the manifest this writes holds no
other row), so no held-out figure can enter the choice. Per candidate, on its own vectors (its
card's embedding), as ``cxrtool evaluate`` and ``cxrtool search`` score them:

* mean zero-shot AUROC over the six issue labels;
* side figure: left-vs-right AUROC pooled over every one-sided (finding, image) pair of the
  validation split (cos(left X) - cos(right X) as search ranks, left = 1);

each with a patient-bootstrap 95% CI and, against the best candidate on that figure, a paired
CI of the difference (the same resampled patients for both). ``--cost`` measures model-only
img/s on this CPU (benchmarks/embed_throughput.py on sample_data/archive, median of 3) for every
candidate in one process; run it when no training is running. With all candidates built and the
cost measured, the rule picks the default. The shipped v4 is scored too, for reference only.

Usage: cd scripts && python select_model_v5.py [--shared DIR] [--cost]
Results: docs/model-v5-selection.json (kept in the repo) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import time
from pathlib import Path

import numpy as np
from build_model_v5 import OUT, VARIANTS
from nih_split import V5_HELD_OUT_DIGEST, held_out_digest, v5_studies
from train_experiments import ISSUE_LABELS

from cxrtool.constants import N_RESAMPLES
from cxrtool.data.manifest import write_manifest
from cxrtool.data.prompts import PromptBank
from cxrtool.evaluate.bootstrap import bootstrap_ci
from cxrtool.evaluate.classification import auroc, known
from cxrtool.evaluate.eval_set import EvalSet, embed_eval_set, eval_set_from_manifest
from cxrtool.evaluate.laterality import lateral_labels, side_codes, side_scores
from cxrtool.evaluate.zero_shot import ZeroShotClassifier, label_prompt_sets
from cxrtool.model import DEFAULT_MODEL_DIR, load_model

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "model-v5-selection.json"
COST = OUT / "cost.json"
SAME_COST = 0.05  # img/s within 5% of each other count as the same speed (then bytes per vector decide)


def validation_set(shared: Path) -> EvalSet:
    """The v5 split's validation rows, and nothing else."""
    rest, test = v5_studies(shared)
    if held_out_digest({s.patient_key for s in test}) != V5_HELD_OUT_DIGEST:
        raise SystemExit("the v5 held-out split changed (scripts/nih_split.py): the rule's figures would not compare")
    val = [s for s in rest if s.split == "validate"]
    return eval_set_from_manifest(write_manifest(val, OUT / "validate_manifest.parquet"))


def scores(model_dir: Path, es: EvalSet, cache: Path, bank: PromptBank) -> dict[str, np.ndarray]:
    """Per image: the six labels' zero-shot probabilities; per one-sided (finding, image) pair: the side score."""
    model = load_model(str(model_dir))
    es.vectors = None
    failed = embed_eval_set(model, es, cache_dir=cache)
    if failed:
        raise SystemExit(f"{len(failed)} validation images failed to decode: {failed[:3]}")
    prob = ZeroShotClassifier.from_prompts(model, label_prompt_sets(ISSUE_LABELS, bank)).probabilities(es.vectors)
    diffs = []
    for name in lateral_labels(es, bank):
        sl, sr, codes = side_scores(model, es, name, bank)
        diffs.append((sl - sr)[codes != 0])
    return {"prob": prob, "side": np.concatenate(diffs)}


def side_pairs(es: EvalSet, bank: PromptBank) -> tuple[np.ndarray, np.ndarray]:
    """(left = True per pair, row of the pair's image) in :func:`scores`' order (the data's, not a model's)."""
    left, rows = [], []
    for name in lateral_labels(es, bank):
        codes = side_codes(es.sides[name], es.labels.get(name))
        left.append(codes[codes != 0] == 1)
        rows.append(np.flatnonzero(codes != 0))
    return np.concatenate(left), np.concatenate(rows)


def figures(es: EvalSet, got: dict[str, dict[str, np.ndarray]], bank: PromptBank) -> dict:
    """Point estimates, CIs and paired difference CIs of both figures for every model in ``got``."""
    y = np.stack([es.labels[label] for label in ISSUE_LABELS], axis=1)
    pair_left, pair_row = side_pairs(es, bank)
    patients = np.asarray(es.patients)

    def mean_auroc(name: str, idx: np.ndarray) -> float:
        vals = []
        for j in range(len(ISSUE_LABELS)):
            ok = known(y[idx, j])
            vals.append(auroc(got[name]["prob"][idx, j][ok], y[idx, j][ok] == 1))
        return float(np.mean(vals))  # NaN (resample skipped) when a label lost a class

    def side(name: str, idx: np.ndarray) -> float:
        return auroc(got[name]["side"][idx], pair_left[idx])

    metrics = {"mean_auroc": (mean_auroc, np.arange(len(es)), patients),
               "side_auroc": (side, np.arange(len(pair_left)), patients[pair_row])}
    out: dict = {"validation": {"images": len(es), "patients": len(set(es.patients)),
                                "side_pairs": int(len(pair_left)), "side_pairs_left": int(pair_left.sum())},
                 "models": {name: {"auroc_by_label": {label: round(auroc(got[name]["prob"][known(y[:, j]), j],
                                                                       y[known(y[:, j]), j] == 1), 4)
                                                      for j, label in enumerate(ISSUE_LABELS)}} for name in got}}
    for key, (metric, index, groups) in metrics.items():
        for name in got:
            ci = bootstrap_ci(lambda i, n=name, m=metric: m(n, i), index, groups=groups, n_resamples=N_RESAMPLES)
            out["models"][name][key] = ci.to_dict()
        candidates = [n for n in got if n in VARIANTS]
        if not candidates:
            continue
        best = max(candidates, key=lambda n: out["models"][n][key]["value"])
        for name in candidates:
            diff = bootstrap_ci(lambda i, n=name, m=metric, b=best: m(n, i) - m(b, i), index, groups=groups,
                                n_resamples=N_RESAMPLES)
            out["models"][name][f"{key}_minus_best"] = {"best": best, **diff.to_dict()}
    return out


def measure_cost(models: dict[str, Path]) -> dict:
    """Model-only and pipeline img/s of each model on sample_data/archive, one after another in this process."""
    spec = importlib.util.spec_from_file_location("embed_throughput", REPO / "benchmarks" / "embed_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = {"archive": "sample_data/archive", "repeat": 3, "load_average_before": round(os.getloadavg()[0], 2),
           "date": time.strftime("%Y-%m-%d %H:%M"), "models": {}}
    for name, model_dir in models.items():
        model = load_model(str(model_dir), device="cpu")
        r = bench.measure(REPO / "sample_data" / "archive", model, "cpu", repeat=3)
        out["models"][name] = {"model_only_img_per_s": r["model_only_img_per_s"],
                               "pipeline_img_per_s": r["pipeline_img_per_s"],
                               "bytes_per_vector": int(model.card.output_dim) * 4, "embedding": model.card.embedding,
                               "input_size": int(model.card.image.input_size)}
        logging.info("cost %s: %s", name, out["models"][name])
    out["load_average_after"] = round(os.getloadavg()[0], 2)
    return out


def decide(fig: dict, cost: dict) -> dict:
    """The rule of docs/model-v5.md: the cheapest candidate not significantly worse than the best on both figures."""
    models = fig["models"]
    qualified = [n for n in VARIANTS if all(models[n][f"{k}_minus_best"]["high"] >= 0
                                            for k in ("mean_auroc", "side_auroc"))]
    speed = {n: cost["models"][n]["model_only_img_per_s"] for n in qualified}
    fastest = max(qualified, key=lambda n: speed[n])
    same = [n for n in qualified if speed[n] >= (1 - SAME_COST) * speed[fastest]]
    pick = min(same, key=lambda n: (cost["models"][n]["bytes_per_vector"], -models[n]["mean_auroc"]["value"]))
    return {"qualified": qualified, "pick": pick, "same_speed_as_fastest": same}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cost", action="store_true", help="measure img/s of every built candidate (no training running)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    built = {n: OUT / n / "model" for n in VARIANTS if (OUT / n / "model" / "model.json").is_file()}
    models = {**built, "v4 (shipped, reference)": DEFAULT_MODEL_DIR}
    bank = PromptBank.load()
    es = validation_set(args.shared)
    got = {name: scores(d, es, (OUT / "val_cache" / name.split()[0]), bank) for name, d in models.items()}
    fig = figures(es, got, bank)
    if args.cost:
        COST.write_text(json.dumps(measure_cost(models), indent=2) + "\n")
    cost = json.loads(COST.read_text()) if COST.is_file() else None
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    result = {"rule": "docs/model-v5.md", "held_out_digest": V5_HELD_OUT_DIGEST, "commit": commit, **fig,
              "cost": cost, "decision": None}
    for name in built:
        summary = OUT / name / "summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            result["models"][name]["training"] = {k: s[k] for k in ("best_epoch", "train_seconds", "embedding")}
    missing = [n for n in VARIANTS if n not in built]
    if missing:
        logging.info("not built yet: %s (no decision)", ", ".join(missing))
    elif not cost or any(n not in cost["models"] for n in VARIANTS):
        logging.info("cost not measured for every candidate: run with --cost (no decision)")
    else:
        result["decision"] = decide(fig, cost)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"validation: {fig['validation']}")
    print("| model | mean AUROC (6) [95% CI] | minus best [paired CI] | side AUROC, pooled [95% CI] | minus best "
          "[paired CI] | model-only img/s | bytes/vector |")
    print("|---|---|---|---|---|---|---|")
    for name, m in fig["models"].items():
        cells = []
        for key in ("mean_auroc", "side_auroc"):
            ci, d = m[key], m.get(f"{key}_minus_best")
            cells.append(f"{ci['value']:.3f} [{ci['low']:.2f}, {ci['high']:.2f}]")
            cells.append(f"{d['value']:+.3f} [{d['low']:+.2f}, {d['high']:+.2f}]" if d else "–")
        c = (cost or {}).get("models", {}).get(name, {})
        print(f"| {name} | " + " | ".join(cells)
              + f" | {c.get('model_only_img_per_s', '–')} | {c.get('bytes_per_vector', '–')} |")
    print(f"decision: {result['decision']}")


if __name__ == "__main__":
    main()
