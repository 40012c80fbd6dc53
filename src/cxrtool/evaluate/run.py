"""`evaluate_model`: every protocol on one EvalSet, as one JSON-able summary plus plot data.

Images of the evaluation split (default ``test``; ``validate`` when a manifest has no test split)
are scored; the ``train`` split is used only to fit the linear probe. Bootstrap intervals resample
patients. Everything random is seeded, so a re-run gives the same figures. When the evaluated rows
carry one-sided findings (the manifest's ``sides``), a laterality section is added (``laterality.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cxrtool.data.prompts import PromptBank
from cxrtool.errors import ManifestError
from cxrtool.evaluate.bootstrap import N_RESAMPLES
from cxrtool.evaluate.classification import THRESHOLD, binary_report, known, multiclass_report, roc_points
from cxrtool.evaluate.eval_set import EvalSet
from cxrtool.evaluate.laterality import LATERALITY_KS, laterality_report
from cxrtool.evaluate.probe import FRACTIONS, linear_probe
from cxrtool.evaluate.prompt_grid import load_prompt_grid
from cxrtool.evaluate.retrieval import RECALL_KS, dedupe_texts, image_to_text_ranks, rank_summary, text_to_image_ranks
from cxrtool.evaluate.subgroups import subgroup_report
from cxrtool.evaluate.zero_shot import Scoring, ZeroShotClassifier, label_prompt_sets, multiclass_scores
from cxrtool.model.dual import DualEncoder


@dataclass
class EvalOptions:
    split: str = "test"
    labels: Sequence[str] | None = None
    custom_prompts: dict | None = None
    grid_path: str | None = None
    threshold: float = THRESHOLD
    n_resamples: int = N_RESAMPLES
    seed: int = 0
    probe_fractions: Sequence[float] = FRACTIONS
    ks: Sequence[int] = RECALL_KS
    laterality_ks: Sequence[int] = LATERALITY_KS


@dataclass
class EvalResult:
    summary: dict
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    recall_curves: dict[str, np.ndarray] = field(default_factory=dict)  # direction -> ranks
    predictions: list[dict] = field(default_factory=list)


def pick_split(es: EvalSet, wanted: str) -> tuple[str, np.ndarray]:
    """(split name, mask): ``wanted``, else validate, else every row (reported as 'all, not held out')."""
    for name in (wanted, "validate"):
        mask = es.splits == name
        if mask.any():
            return name, mask
    return "all (no held-out split)", np.ones(len(es), dtype=bool)


def scoreable_labels(labels: dict[str, np.ndarray], mask: np.ndarray, wanted: Sequence[str] | None,
                     bank: PromptBank) -> list[str]:
    """Labels with at least one positive and one negative among the evaluated rows."""
    names = [bank.canonical(n) for n in wanted] if wanted else sorted(labels)
    out = []
    for n in names:
        y = labels.get(n)
        if y is not None and (y[mask] == 1).any() and (y[mask] == 0).any():
            out.append(n)
    return out


def evaluate_model(model: DualEncoder, es: EvalSet, options: EvalOptions | None = None,
                   progress: Callable[[str, int], Callable[[int], None]] | None = None) -> EvalResult:
    """Zero-shot AUROC (+CI), accuracy/F1, 5x200-style accuracy, retrieval, linear probe, subgroups, laterality.

    ``progress(description, total)`` may return a per-step callback for long loops.
    """
    opt = options or EvalOptions()
    bank = PromptBank.load()
    if es.vectors is None:
        raise ManifestError("the evaluation set has no vectors yet", "embed it with embed_eval_set first")
    split, mask = pick_split(es, opt.split)
    test = es.subset(mask)
    labels = scoreable_labels(es.labels, mask, opt.labels, bank)
    if not labels:
        raise ManifestError(f"no label has both positives and negatives in the {split} split",
                            "check the manifest's labels or --labels")
    summary: dict = {  # "fingerprint" holds the vector id; the key stays for readers of earlier summary.json files
        "model": {"fingerprint": model.card.vector_id, "name": model.card.provenance.get("name", ""),
                  "family": model.card.family, "scoring": model.card.scoring.rule,
                  "logit_scale": round(float(model.scale().detach()), 4),
                  "logit_bias": round(float(model.bias().detach()), 4)},
        "data": {"split": split, "images": len(test), "patients": int(len(set(test.patients)))},
        "settings": {"threshold": opt.threshold, "bootstrap_resamples": opt.n_resamples, "seed": opt.seed,
                     "bootstrap_unit": "patient", "ci_level": 0.95},
    }
    result = EvalResult(summary)

    # zero-shot, per label
    sets = label_prompt_sets(labels, bank, opt.custom_prompts)
    clf = ZeroShotClassifier.from_prompts(model, sets)
    prob = clf.probabilities(test.vectors)
    step = progress("bootstrap", len(labels)) if progress else None
    rows = []
    for j, label in enumerate(labels):
        row = {"label": label, **binary_report(test.labels[label], prob[:, j], test.patients, opt.threshold,
                                              opt.n_resamples, opt.seed),
               "prompts": {"positive": len(sets[j].positive), "negative": len(sets[j].negative)}}
        rows.append(row)
        result.roc[label] = roc_points(test.labels[label], prob[:, j])
        if step:
            step(1)
    scored = [r["auroc"]["value"] for r in rows if r["auroc"]]
    summary["zero_shot"] = {"labels": rows, "mean_auroc": round(float(np.mean(scored)), 4) if scored else None}
    result.predictions = [{"key": k, **{lab: round(float(p), 4) for lab, p in zip(labels, pr, strict=True)}}
                          for k, pr in zip(test.keys, prob, strict=True)]

    summary["multiclass"] = _multiclass(model, test, bank, opt)
    summary["retrieval"] = _retrieval(model, test, opt, result)
    summary["linear_probe"] = _probe(es, split, test, labels, opt, progress)
    summary["subgroups"] = subgroup_report(prob, test.labels, labels, test.attributes)
    summary["laterality"] = laterality_report(model, test, opt.labels, opt.laterality_ks, opt.n_resamples, opt.seed,
                                              bank)
    return result


def _multiclass(model: DualEncoder, test: EvalSet, bank: PromptBank, opt: EvalOptions) -> dict | None:
    """5x200 style: images positive for exactly one of the grid's classes, argmax of mean prompt cosine."""
    grid = load_prompt_grid(opt.grid_path)
    classes = [c for c in grid if bank.canonical(c) in test.labels]
    if len(classes) < 2:
        return None
    y = np.stack([test.labels[bank.canonical(c)] for c in classes], axis=1)
    single = (y == 1).sum(axis=1) == 1
    if not single.any():
        return None
    target = (y[single] == 1).argmax(axis=1)
    scoring = Scoring.of(model)
    scores = multiclass_scores(test.vectors[single], [model.encode_texts(grid[c]) for c in classes], scoring)
    report = multiclass_report(target, scores, classes, test.patients[single], opt.n_resamples, opt.seed)
    report["prompts"] = {c: len(grid[c]) for c in classes}
    score = "mean per-prompt sigmoid" if scoring.rule == "sigmoid" else "mean cosine"
    report["rule"] = f"images positive for exactly one class; {score} to each class's prompt grid, argmax"
    return report


def _retrieval(model: DualEncoder, test: EvalSet, opt: EvalOptions, result: EvalResult) -> dict | None:
    has_text = np.array([bool(t.strip()) for t in test.texts])
    if has_text.sum() < 2:
        return None
    vecs = test.vectors[has_text]
    unique, ids = dedupe_texts([t for t, h in zip(test.texts, has_text, strict=True) if h])
    tv = model.encode_texts(unique)
    i2t, t2i = image_to_text_ranks(vecs, tv, ids), text_to_image_ranks(vecs, tv, ids)
    result.recall_curves = {"image_to_text": i2t, "text_to_image": t2i}
    return {"images": int(has_text.sum()), "unique_texts": len(unique),
            "image_to_text": rank_summary(i2t, opt.ks), "text_to_image": rank_summary(t2i, opt.ks)}


def _probe(es: EvalSet, split: str, test: EvalSet, labels: list[str], opt: EvalOptions, progress) -> dict | None:
    """Fit on the train split only; none when the evaluated rows are not held out from it."""
    train_mask = es.splits == "train"
    if not train_mask.any() or split not in ("test", "validate") or not opt.probe_fractions:
        return None
    train = es.subset(train_mask)
    train_labels = {k: train.labels[k] for k in labels if known(train.labels[k]).any()}
    step = progress("linear probe", len(opt.probe_fractions) * len(train_labels)) if progress else None
    rows = linear_probe(train.vectors, train_labels, train.patients, test.vectors, test.labels,
                        opt.probe_fractions, opt.seed, step)
    means = {}
    for f in opt.probe_fractions:
        vals = [r["auroc"] for r in rows if r["fraction"] == f and r["auroc"] is not None]
        means[str(f)] = {"mean_auroc": round(float(np.mean(vals)), 4) if vals else None, "labels_scored": len(vals),
                         "train_images": max((r["train_images"] for r in rows if r["fraction"] == f), default=0)}
    return {"train_images": len(train), "train_patients": int(len(set(train.patients))), "by_fraction": means,
            "rows": rows}
