"""Laterality: does "left pleural effusion" find left effusions, and tell them from right ones?

For each finding X that has one-sided images among the evaluated rows (the side of X is left or
right, and X is not labelled negative or uncertain); sides come from the manifest's ``sides``:

* **top-k side accuracy**: rank every evaluated image for the query "left X" as ``cxrtool search``
  ranks it (:func:`cxrtool.index.query.text_query_vector`: the bank's "left X" sentences,
  contrasted with the same sentences on the right) and take the top k; among those with a
  one-sided X, count the ones whose X is on the left; do the same for "right X"; pool:
  (correct left + correct right) / (considered left + considered right). A model deaf to the
  side word returns the same top k for both queries and scores exactly 0.5, whatever the mix of
  sides in the data; ``shared`` counts the images both queries put in their top k, the plainest
  sign of such deafness.
* **left-vs-right AUROC**: on the images with a one-sided X, score = the "left X" search score -
  the "right X" search score, positive = left. That is cos(image, left ensemble) - cos(image,
  right ensemble) times a constant (the side contrast scales it), and the softmax over the pair is
  monotone in it too, so all three give the same AUROC. Chance is 0.5.

Both carry patient-bootstrap 95 % intervals (``bootstrap.py``); for top-k each resample is ranked
afresh. Prompt ensembles are the bank's sided templates (``PromptBank`` ``positive_for``) with the
query itself, mean of the unit sentence vectors, re-normalised, as search builds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrtool.constants import LATERALITY_KS
from cxrtool.data.prompts import PromptBank
from cxrtool.data.sides import LEFT, RIGHT
from cxrtool.evaluate.bootstrap import N_RESAMPLES, bootstrap_ci
from cxrtool.evaluate.classification import auroc
from cxrtool.evaluate.eval_set import EvalSet
from cxrtool.index.query import text_query_vector
from cxrtool.model.card import ModelCard
from cxrtool.model.dual import DualEncoder

CHANCE = 0.5


def side_codes(sides: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Per image: 1 left, -1 right, 0 neither (bilateral, unknown, or the finding negative/uncertain)."""
    sides = np.asarray(sides, dtype=object)
    codes = np.where(sides == LEFT, 1, np.where(sides == RIGHT, -1, 0))
    if labels is not None:
        y = np.asarray(labels, dtype=np.float64)
        codes = np.where((y == 0) | (y == -1), 0, codes)
    return codes.astype(np.int64)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")[:k]


def topk_side_counts(score_left: np.ndarray, score_right: np.ndarray, codes: np.ndarray, k: int) -> dict:
    """Correct and considered (one-sided) images in the top k of the left and of the right query, and
    ``shared``: images in both top k (k of k: the side word changed nothing)."""
    codes = np.asarray(codes)
    top_left, top_right = _top(score_left, k), _top(score_right, k)
    left, right = codes[top_left], codes[top_right]
    return {"left_query": {"correct": int((left == 1).sum()), "considered": int((left != 0).sum())},
            "right_query": {"correct": int((right == -1).sum()), "considered": int((right != 0).sum())},
            "shared": len(set(top_left.tolist()) & set(top_right.tolist()))}


def pooled_counts(counts: dict) -> tuple[int, int]:
    """(correct, considered) over both queries of a :func:`topk_side_counts` result."""
    return (counts["left_query"]["correct"] + counts["right_query"]["correct"],
            counts["left_query"]["considered"] + counts["right_query"]["considered"])


def topk_side_accuracy(score_left: np.ndarray, score_right: np.ndarray, codes: np.ndarray, k: int) -> float:
    """Pooled fraction of one-sided images in both queries' top k that are on the named side; NaN if none."""
    correct, considered = pooled_counts(topk_side_counts(score_left, score_right, codes, k))
    return correct / considered if considered else float("nan")


def left_right_auroc(score_left: np.ndarray, score_right: np.ndarray, codes: np.ndarray) -> float:
    """AUROC of (left score - right score) for left vs right, over the one-sided images; NaN if one side is empty."""
    codes = np.asarray(codes)
    one = codes != 0
    diff = np.asarray(score_left, dtype=np.float64) - np.asarray(score_right, dtype=np.float64)
    return auroc(diff[one], codes[one] == 1)


def lateral_labels(es: EvalSet, bank: PromptBank, wanted: Sequence[str] | None = None) -> list[str]:
    """Labels with sided prompts and at least one one-sided image in ``es``."""
    names = [bank.canonical(n) for n in wanted] if wanted else sorted(es.sides)
    return [n for n in names if n in es.sides and bank.prompts(n).lateral
            and (side_codes(es.sides[n], es.labels.get(n)) != 0).any()]


def side_scores(model: DualEncoder, es: EvalSet, name: str,
                bank: PromptBank | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``es`` (vectors filled): scores for the searches "left X" and "right X", and the side codes."""
    bank = bank or PromptBank.load()
    sl = es.vectors @ text_query_vector(model, f"{LEFT} {name.lower()}", bank)
    sr = es.vectors @ text_query_vector(model, f"{RIGHT} {name.lower()}", bank)
    return sl, sr, side_codes(es.sides[name], es.labels.get(name))


def laterality_report(model: DualEncoder, es: EvalSet, labels: Sequence[str] | None = None,
                      ks: Sequence[int] = LATERALITY_KS, n_resamples: int = N_RESAMPLES, seed: int = 0,
                      bank: PromptBank | None = None) -> dict | None:
    """Both metrics per lateral finding over the rows of ``es`` (vectors filled); None without one-sided images."""
    bank = bank or PromptBank.load()
    names = lateral_labels(es, bank, labels)
    if not names or es.vectors is None:
        return None
    rows = []
    for name in names:
        prompts = bank.prompts(name)
        left_prompts, right_prompts = prompts.positive_for(LEFT), prompts.positive_for(RIGHT)
        sl, sr, codes = side_scores(model, es, name, bank)
        one = codes != 0
        row = {"label": name, "one_sided": int(one.sum()), "left": int((codes == 1).sum()),
               "right": int((codes == -1).sum()), "patients": int(len(set(es.patients[one]))),
               "bilateral": int((es.sides[name] == "bilateral").sum()),
               "prompts": {"left": len(left_prompts), "right": len(right_prompts),
                           "left_example": left_prompts[0], "right_example": right_prompts[0]}}
        if row["left"] and row["right"]:
            row["auroc_left_vs_right"] = bootstrap_ci(left_right_auroc, sl[one], sr[one], codes[one],
                                                      groups=es.patients[one], n_resamples=n_resamples,
                                                      seed=seed).to_dict()
        else:
            row["auroc_left_vs_right"] = None
        row["top_k"] = []
        for k in ks:
            counts = topk_side_counts(sl, sr, codes, k)
            ci = bootstrap_ci(lambda a, b, c, k=k: topk_side_accuracy(a, b, c, k), sl, sr, codes,
                              groups=es.patients, n_resamples=n_resamples, seed=seed)
            correct, considered = pooled_counts(counts)
            row["top_k"].append({"k": int(k), "accuracy": ci.to_dict() if considered else None,
                                 "correct": correct, "considered": considered, **counts})
        rows.append(row)
    return {"labels": rows, "chance": CHANCE, "ks": [int(k) for k in ks],
            "rule": "one-sided = side left or right and the finding not negative/uncertain; top-k side accuracy "
                    "pooled over the 'left X' and 'right X' queries; AUROC of cos(left) - cos(right), left = 1"}


def record_in_card(model_dir: str | Path, report: dict, measured_on: str) -> dict[str, dict]:
    """Write a :func:`laterality_report`'s left-vs-right AUROCs into the model directory's card
    (``ModelCard.laterality``), so search can warn about sides the model does not tell; labels
    without an AUROC (one side missing) are left as they were. Returns the card's entries."""
    directory = Path(model_dir)
    card = ModelCard.load(directory)
    for row in report["labels"]:
        ci = row.get("auroc_left_vs_right")
        if ci:
            card.laterality[row["label"]] = {"auroc": round(float(ci["value"]), 4), "low": round(float(ci["low"]), 4),
                                             "high": round(float(ci["high"]), 4),
                                             "one_sided": int(row["one_sided"]), "measured_on": measured_on}
    card.validate()
    card.save(directory)
    return card.laterality
