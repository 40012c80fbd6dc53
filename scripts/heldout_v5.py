"""Held-out evaluation of the default-model v5 candidates against v4 (issue 28).

What: on the v5 held-out split (the ``test`` studies of nih_split.v5_studies: 509 images / 420
patients of nih_512 + nih_512_extra, digest ``V5_HELD_OUT_DIGEST``), for the reference v4 and each
v5 candidate (runs/v5/<variant>/model), each with a patient-bootstrap 95% CI:

* zero-shot AUROC of the six issue labels and their mean, as ``cxrtool evaluate`` computes them;
* lift@50 (precision@50 / base rate) of the searches "pleural effusion", "cardiomegaly" and
  "pneumothorax", ranked as ``cxrtool search`` ranks (the top 50 taken afresh in each resample);
* laterality on the one-sided held-out images (sides from nih_512's boxes; nih_512_extra has none):
  left-vs-right AUROC and top-50 side accuracy per lateral finding (evaluate/laterality.py, the
  queries ranked over all held-out images);
* the supervised linear-probe ceiling of each embedding (probe_ceiling.probe_scores: fitted on the
  v5 train+validate rows, scored on the held-out rows): per-label AUROC, their mean, lift@50;
* for each candidate, paired CIs of (candidate - v4) for the mean AUROC and each lift@50 (the same
  resampled patients for both models).

Why: docs/model-v5.md picks v5 on the validation split only; these are the unbiased figures of the
pick (and of the other candidates, for the record: they do not change the choice). So that no
held-out figure can steer the choice, a candidate is scored only once docs/model-v5-selection.json
holds a decision; v4 may always be scored. ``--v4 DIR`` names the reference (default: the saved
copy of v4, build_default_model.V4_COPY, since v5 replaced it as the shipped model); its card's
provenance name is recorded.

Usage: cd scripts && python heldout_v5.py [--models v4,v4like,flip224,single288] [--v4 DIR] [--shared DIR]
(default: v4 and every built candidate; v4 is always scored, the paired differences need it)
Embedding caches: runs/v5/heldout/<name>/. Results: docs/model-v5-heldout.json and Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from build_default_model import V4_COPY
from build_model_v5 import OUT, VARIANTS
from nih_split import V5_HELD_OUT_DIGEST, held_out_digest, v5_studies
from probe_ceiling import probe_scores
from select_model_v5 import RESULTS as SELECTION
from train_experiments import ISSUE_LABELS, LIFT_QUERIES, precision_at

from cxrtool.constants import N_RESAMPLES
from cxrtool.data.manifest import write_manifest
from cxrtool.data.prompts import PromptBank
from cxrtool.evaluate import EvalOptions, run_evaluation
from cxrtool.evaluate.bootstrap import bootstrap_ci
from cxrtool.evaluate.classification import auroc, binary_report, known
from cxrtool.evaluate.eval_set import EvalSet, embed_eval_set, eval_set_from_manifest
from cxrtool.evaluate.laterality import laterality_report, side_codes
from cxrtool.evaluate.zero_shot import ZeroShotClassifier, label_prompt_sets
from cxrtool.index.query import text_query_vector
from cxrtool.model import load_model

REPO = Path(__file__).resolve().parents[1]
HELDOUT = OUT / "heldout"
RESULTS = REPO / "docs" / "model-v5-heldout.json"
REFERENCE = "v4"
K = 50
SIDE_COLUMNS = ("Pleural Effusion", "Pneumothorax")  # the lateral findings of the before/after table


def model_dir(name: str, v4: Path = V4_COPY) -> Path:
    """Where a model of this script lives: the v4 reference, or a candidate's build folder."""
    return v4 if name == REFERENCE else OUT / name / "model"


def decision_or_refuse(names: list[str]) -> dict | None:
    """The committed decision of select_model_v5.py; no candidate is scored on held-out data before it exists."""
    decision = json.loads(SELECTION.read_text()).get("decision") if SELECTION.is_file() else None
    candidates = [n for n in names if n != REFERENCE]
    if candidates and not decision:
        raise SystemExit(f"refusing to score {', '.join(candidates)} on held-out data: "
                         f"{SELECTION.relative_to(REPO)} holds no decision yet (run select_model_v5.py first; "
                         f"--models {REFERENCE} may run)")
    return decision


def heldout_manifest(shared: Path) -> Path:
    """v5's train+validate rows as split ``train`` (the probe fits on them) and its held-out rows as ``test``."""
    rest, test = v5_studies(shared)
    if held_out_digest({s.patient_key for s in test}) != V5_HELD_OUT_DIGEST:
        raise SystemExit("the v5 held-out split changed (scripts/nih_split.py): refusing to score it")
    for s in rest:
        s.split = "train"
    return write_manifest(rest + test, HELDOUT / "manifest.parquet")


def scores(name: str, model_dir: Path, manifest: Path, bank: PromptBank) -> dict:
    """One model's per-image scores on the held-out rows, ``cxrtool evaluate``'s summary and its laterality."""
    model = load_model(str(model_dir))
    cache = HELDOUT / name  # cache files are named by the model's vector id, so a replaced model re-embeds
    es = eval_set_from_manifest(manifest, bank)
    failed = embed_eval_set(model, es, cache_dir=cache)  # every row: the probe needs the training rows too
    if failed:
        raise SystemExit(f"{name}: {len(failed)} images failed to decode: {failed[:3]}")
    ev = run_evaluation(manifest, model=model, cache_dir=cache,  # the held-out rows only, from the cache
                        options=EvalOptions(split="test", labels=ISSUE_LABELS, probe_fractions=(), laterality_ks=()))
    test = es.subset(es.splits == "test")
    assert test.keys == ev.eval_set.keys and np.array_equal(test.vectors, ev.eval_set.vectors)
    card, where = model.card, model_dir.resolve()
    classifier = ZeroShotClassifier.from_prompts(model, label_prompt_sets(ISSUE_LABELS, bank))
    return {
        "model": {"dir": str(where.relative_to(REPO) if where.is_relative_to(REPO) else where),
                  "name": card.provenance.get("name", ""), "vector_id": card.vector_id,
                  "embedding": card.embedding, "input_size": int(card.image.input_size),
                  "bytes_per_vector": int(card.output_dim) * 4},
        "summary": ev.summary, "test": test,
        "prob": classifier.probabilities(test.vectors),  # as evaluate scores them (asserted in figures)
        "search": {label: test.vectors @ text_query_vector(model, q, bank) for label, q in LIFT_QUERIES.items()},
        "probe": np.stack([probe_scores(es, label)[0] for label in ISSUE_LABELS], axis=1),
        "probe_train": {"images": int((es.splits == "train").sum()),
                        "patients": len(set(es.patients[es.splits == "train"]))},
        "laterality": laterality_report(model, test, None, ks=(K,), n_resamples=N_RESAMPLES, bank=bank),
    }


def mean_auroc(prob: np.ndarray, y: np.ndarray, idx: np.ndarray) -> float:
    """Mean AUROC over the label columns on rows ``idx``; NaN (resample skipped) when a label lost a class."""
    return float(np.mean([auroc(prob[idx, j][known(y[idx, j])], y[idx, j][known(y[idx, j])] == 1)
                          for j in range(y.shape[1])]))


def lift(ranking: np.ndarray, positive: np.ndarray, idx: np.ndarray) -> float:
    """lift@K of a ranking on rows ``idx`` (the top K taken among them)."""
    p = positive[idx]
    return precision_at(ranking[idx], p, K) / p.mean() if p.any() else float("nan")


def figures(got: dict[str, dict]) -> dict[str, dict]:
    """Every model's figures with CIs, and each candidate's paired differences from v4."""
    test = got[REFERENCE]["test"]
    y = np.stack([test.labels[label] for label in ISSUE_LABELS], axis=1)
    positive = {label: np.nan_to_num(test.labels[label]) == 1 for label in LIFT_QUERIES}
    index = np.arange(len(test))
    lift_col = {label: ISSUE_LABELS.index(label) for label in LIFT_QUERIES}

    def ci(metric: Callable[[np.ndarray], float]) -> dict:
        return bootstrap_ci(metric, index, groups=test.patients, n_resamples=N_RESAMPLES).to_dict()

    def mean_of(key: str, name: str) -> Callable[[np.ndarray], float]:
        return lambda i: mean_auroc(got[name][key], y, i)

    def lift_of(name: str, label: str, probe: bool = False) -> Callable[[np.ndarray], float]:
        ranking = got[name]["probe"][:, lift_col[label]] if probe else got[name]["search"][label]
        return lambda i: lift(ranking, positive[label], i)

    out = {}
    for name, g in got.items():
        assert g["test"].keys == test.keys
        zero = ci(mean_of("prob", name))
        assert abs(zero["value"] - g["summary"]["zero_shot"]["mean_auroc"]) < 1e-3  # the same figure as evaluate's
        m = {"model": g["model"],
             "zero_shot": {"auroc": {r["label"]: r["auroc"] for r in g["summary"]["zero_shot"]["labels"]},
                           "mean_auroc": zero},
             "lift@50": {label: {"query": query, "positives": int(positive[label].sum()),
                                 "base_rate": round(float(positive[label].mean()), 4),
                                 "precision@50": round(precision_at(g["search"][label], positive[label], K), 4),
                                 **ci(lift_of(name, label))} for label, query in LIFT_QUERIES.items()},
             "laterality": (g["laterality"] or {}).get("labels", []),
             "probe": {"fitted_on": {"split": "v5 train + validate", **g["probe_train"]},
                       "auroc": {label: binary_report(test.labels[label], g["probe"][:, j], test.patients,
                                                      n_resamples=N_RESAMPLES)["auroc"]
                                 for j, label in enumerate(ISSUE_LABELS)},
                       "mean_auroc": ci(mean_of("probe", name)),
                       "lift@50": {label: ci(lift_of(name, label, probe=True)) for label in LIFT_QUERIES}}}
        if name != REFERENCE:
            m["minus_v4"] = {"mean_auroc": ci(lambda i, n=name: mean_of("prob", n)(i) - mean_of("prob", REFERENCE)(i)),
                             "lift@50": {label: ci(lambda i, n=name, lb=label: lift_of(n, lb)(i)
                                                   - lift_of(REFERENCE, lb)(i)) for label in LIFT_QUERIES}}
        out[name] = m
        logging.info("%s: mean AUROC %s, probe mean %s", name, zero, m["probe"]["mean_auroc"])
    return out


def fmt(ci: dict | None, digits: int = 3, ci_digits: int = 2, sign: str = "") -> str:
    if not ci:
        return "–"
    return f"{ci['value']:{sign}.{digits}f} [{ci['low']:{sign}.{ci_digits}f}, {ci['high']:{sign}.{ci_digits}f}]"


def tables(models: dict[str, dict]) -> str:
    """(a) before/after and (b) the probe ceiling, as Markdown."""
    short = {"Pleural Effusion": "effusion", "Cardiomegaly": "cardiomegaly", "Pneumothorax": "pneumothorax"}
    lifts, sides = " / ".join(short[k] for k in LIFT_QUERIES), " / ".join(short[k] for k in SIDE_COLUMNS)
    lines = [f"| model | mean AUROC (6) [95% CI] | minus v4 [paired CI] | {' | '.join(ISSUE_LABELS)} | lift@50 {lifts} "
             f"| lift@50 minus v4 [paired CI] | top-{K} side accuracy {sides} | L-vs-R AUROC {sides} |",
             "|---|---|---|" + "---|" * len(ISSUE_LABELS) + "---|---|---|---|"]
    for name, m in models.items():
        lat = {r["label"]: r for r in m["laterality"]}
        d = m.get("minus_v4", {})
        top = [fmt((lat.get(k) or {}).get("top_k", [{}])[0].get("accuracy"), 2, 2) for k in SIDE_COLUMNS]
        lines.append(f"| {name} | {fmt(m['zero_shot']['mean_auroc'])} | {fmt(d.get('mean_auroc'), sign='+')} | "
                     + " | ".join(fmt(m["zero_shot"]["auroc"].get(k)) for k in ISSUE_LABELS)
                     + " | " + " / ".join(fmt(m["lift@50"][k], 2, 1) for k in LIFT_QUERIES)
                     + " | " + (" / ".join(fmt(d["lift@50"][k], 2, 1, "+") for k in LIFT_QUERIES) if d else "–")
                     + " | " + " / ".join(top)
                     + " | " + " / ".join(fmt((lat.get(k) or {}).get("auroc_left_vs_right"), 2, 2)
                                          for k in SIDE_COLUMNS) + " |")
    lines += ["", f"| model | zero-shot mean AUROC | linear probe mean AUROC [95% CI] | {' | '.join(ISSUE_LABELS)} "
              f"| probe lift@50 {lifts} |", "|---|---|---|" + "---|" * (len(ISSUE_LABELS) + 1)]
    for name, m in models.items():
        p = m["probe"]
        lines.append(f"| {name} | {m['zero_shot']['mean_auroc']['value']:.3f} | {fmt(p['mean_auroc'])} | "
                     + " | ".join(fmt(p["auroc"].get(k)) for k in ISSUE_LABELS)
                     + " | " + " / ".join(fmt(p["lift@50"][k], 2, 1) for k in LIFT_QUERIES) + " |")
    return "\n".join(lines)


def held_out_counts(test: EvalSet) -> dict:
    one_sided = {k: int((side_codes(sides, test.labels.get(k)) != 0).sum()) for k, sides in test.sides.items()}
    return {"images": len(test), "patients": len(set(test.patients)),
            "one_sided_images": {k: v for k, v in one_sided.items() if v}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=None, help=f"comma-separated: {REFERENCE} and/or {', '.join(VARIANTS)}")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--v4", type=Path, default=V4_COPY, help="the reference model directory (a saved copy of v4)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    built = [n for n in VARIANTS if (OUT / n / "model" / "model.json").is_file()]
    names = args.models.split(",") if args.models else [REFERENCE, *built]
    unknown = [n for n in names if n != REFERENCE and n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}: choose from {REFERENCE}, {', '.join(VARIANTS)}")
    decision = decision_or_refuse(names)  # before anything is read or embedded
    unbuilt = [n for n in names if n != REFERENCE and n not in built]
    if unbuilt:
        raise SystemExit(f"not built: {', '.join(unbuilt)} (scripts/build_model_v5.py --variant NAME)")
    names = [REFERENCE, *[n for n in names if n != REFERENCE]]
    dirs = {n: model_dir(n, args.v4) for n in names}
    t0 = time.time()
    manifest = heldout_manifest(args.shared)
    bank = PromptBank.load()
    got = {n: scores(n, d, manifest, bank) for n, d in dirs.items()}
    models = figures(got)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    result = {"issue": 28, "rule": "docs/model-v5.md", "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M"),
              "held_out_digest": V5_HELD_OUT_DIGEST, "held_out": held_out_counts(got[REFERENCE]["test"]),
              "selection": {"file": str(SELECTION.relative_to(REPO)), "pick": (decision or {}).get("pick")},
              "settings": {"bootstrap_resamples": N_RESAMPLES, "seed": 0, "bootstrap_unit": "patient", "k": K,
                           "side_queries_ranked_over": "all held-out images", "reference": REFERENCE},
              "seconds": round(time.time() - t0), "models": models}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"held-out: {result['held_out']['images']} images / {result['held_out']['patients']} patients, digest "
          f"{V5_HELD_OUT_DIGEST}; {REFERENCE} = {models[REFERENCE]['model']['name']}; "
          f"selection pick: {result['selection']['pick']}; commit {commit}")
    print(tables(models))
    print(f"written: {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
