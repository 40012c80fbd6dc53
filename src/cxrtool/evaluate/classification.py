"""Binary and multi-class classification metrics: thin wrappers over scikit-learn.

Why wrappers at all: evaluation labels carry "unknown" (NaN) and "uncertain" (-1) entries that
must be dropped per label before scoring, and a label with one class in the evaluated images has
no AUROC (NaN, not an exception).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score, roc_curve

from cxrtool.constants import THRESHOLD
from cxrtool.evaluate.bootstrap import Interval, bootstrap_ci


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn); NaN when one class is empty."""
    positive = np.asarray(positive).astype(bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, np.asarray(scores, dtype=np.float64)))


def known(y: np.ndarray) -> np.ndarray:
    """Mask of entries that are a definite 0 or 1 (not NaN-unknown, not -1-uncertain)."""
    y = np.asarray(y, dtype=np.float64)
    return (y == 0) | (y == 1)


def binary_report(y: np.ndarray, prob: np.ndarray, groups: np.ndarray | None = None,
                  threshold: float = THRESHOLD, n_resamples: int = 1000, seed: int = 0) -> dict:
    """One label: counts, AUROC with its bootstrap interval, accuracy and F1 at ``threshold``."""
    mask = known(y)
    y, prob = np.asarray(y)[mask].astype(int), np.asarray(prob, dtype=np.float64)[mask]
    g = None if groups is None else np.asarray(groups)[mask]
    pred = (prob >= threshold).astype(int)
    row = {"n": int(len(y)), "positives": int(y.sum()), "threshold": threshold,
           "accuracy": round(float(accuracy_score(y, pred)), 4) if len(y) else None,
           "f1": round(float(f1_score(y, pred, zero_division=0)), 4) if len(y) else None}
    if len(y) and 0 < y.sum() < len(y):
        ci = bootstrap_ci(lambda a, b: roc_auc_score(a, b), y, prob, groups=g, n_resamples=n_resamples, seed=seed)
        row["auroc"] = ci.to_dict()
    else:
        row["auroc"] = None
    return row


def roc_points(y: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) for the known entries, for plotting."""
    mask = known(y)
    fpr, tpr, _ = roc_curve(np.asarray(y)[mask].astype(int), np.asarray(prob)[mask])
    return fpr, tpr


def multiclass_report(y: np.ndarray, scores: np.ndarray, classes: list[str], groups: np.ndarray | None = None,
                      n_resamples: int = 1000, seed: int = 0) -> dict:
    """Accuracy of argmax(scores) against class indices ``y``, with its interval, plus balanced accuracy."""
    y = np.asarray(y, dtype=int)
    pred = np.asarray(scores).argmax(axis=1)
    ci: Interval = bootstrap_ci(lambda a, b: accuracy_score(a, b), y, pred, groups=groups,
                                n_resamples=n_resamples, seed=seed)
    with warnings.catch_warnings():  # a class predicted but absent from y: a fact, not a problem
        warnings.simplefilter("ignore")
        balanced = round(float(balanced_accuracy_score(y, pred)), 4) if len(y) else None
    return {"n": int(len(y)), "classes": {c: int((y == i).sum()) for i, c in enumerate(classes)},
            "accuracy": ci.to_dict(), "balanced_accuracy": balanced}
