"""Linear probe: logistic regression on frozen image embeddings, trained on fractions of the train split.

Fractions are drawn by patient (seeded), so 1 % of the training split is 1 % of its patients and
no patient straddles the subsample boundary. One binary model per label (standardised features,
scikit-learn logistic regression). The L2 strength is chosen by 3-fold cross-validated AUROC on
the training subsample only (a fixed C = 1 overfit 512 features: AUROC *fell* from 1 % to 100 %
of the data); with too few positives for three folds it stays at a strong default. A label whose
subsample has a single class is reported as skipped, not guessed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxrtool.evaluate.classification import auroc, known

FRACTIONS = (0.01, 0.1, 1.0)
C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 1.0)
DEFAULT_C = 1e-2  # when there are too few positives to cross-validate


def patient_subsample(groups: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of the rows of ``ceil(fraction * patients)`` randomly chosen patients (at least one)."""
    patients = np.unique(np.asarray(groups))
    rng = np.random.default_rng(seed)
    take = max(1, int(np.ceil(fraction * len(patients))))
    chosen = rng.choice(patients, size=min(take, len(patients)), replace=False)
    return np.flatnonzero(np.isin(groups, chosen))


def fit_probe(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """A fitted standardise + logistic-regression pipeline for one label (C by 3-fold CV AUROC)."""
    from sklearn.model_selection import StratifiedKFold

    if min(int(y.sum()), int(len(y) - y.sum())) >= 3:
        folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
        clf = LogisticRegressionCV(Cs=list(C_GRID), cv=folds, scoring="roc_auc", max_iter=2000, random_state=seed)
    else:
        clf = LogisticRegression(C=DEFAULT_C, max_iter=2000, random_state=seed)
    with warnings.catch_warnings():  # scikit-learn 1.8+ announces a LogisticRegressionCV attribute change
        warnings.simplefilter("ignore", FutureWarning)
        return make_pipeline(StandardScaler(), clf).fit(x, y)


def linear_probe(train_x: np.ndarray, train_labels: dict[str, np.ndarray], train_groups: np.ndarray,
                 test_x: np.ndarray, test_labels: dict[str, np.ndarray], fractions: Sequence[float] = FRACTIONS,
                 seed: int = 0, progress: Callable[[int], None] | None = None) -> list[dict]:
    """One row per (fraction, label): training size, positives and test AUROC (None when skipped)."""
    rows = []
    for fraction in fractions:
        subset = patient_subsample(train_groups, fraction, seed)
        for label, y_all in train_labels.items():
            y_sub = np.asarray(y_all)[subset]
            keep = known(y_sub)
            y_fit, x_fit = y_sub[keep].astype(int), train_x[subset][keep]
            row = {"fraction": fraction, "label": label, "train_images": int(len(y_fit)),
                   "train_positives": int(y_fit.sum()), "auroc": None}
            y_test = np.asarray(test_labels.get(label, np.full(len(test_x), np.nan)))
            test_keep = known(y_test)
            if 0 < y_fit.sum() < len(y_fit) and test_keep.any():
                model = fit_probe(x_fit, y_fit, seed)
                score = model.predict_proba(test_x[test_keep])[:, 1]
                value = auroc(score, y_test[test_keep].astype(int))
                row["auroc"] = None if np.isnan(value) else round(value, 4)
            else:
                row["skipped"] = "one class in the training subsample" if test_keep.any() else "no test labels"
            rows.append(row)
            if progress:
                progress(1)
    return rows
