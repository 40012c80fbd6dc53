"""Percentile bootstrap confidence intervals, resampled by patient.

Several images can belong to one patient (NIH: ~1.4 per patient), and they are not independent;
resampling images would make the intervals too narrow. With ``groups`` the bootstrap draws
patients with replacement and takes all of each drawn patient's images. Resamples on which the
metric is undefined (e.g. AUROC with no positive drawn) are skipped and counted.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from cxrtool.constants import N_RESAMPLES

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate on all the data and its bootstrap percentile interval."""

    value: float
    low: float
    high: float
    resamples: int  # resamples on which the metric was defined

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def bootstrap_ci(metric: Callable[..., float], *arrays: np.ndarray, groups: np.ndarray | None = None,
                 n_resamples: int = N_RESAMPLES, level: float = LEVEL, seed: int = 0) -> Interval:
    """``metric(*arrays)`` and its percentile interval over ``n_resamples`` seeded resamples."""
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    value = _safe(metric, arrays)
    if groups is None:
        members = [np.array([i]) for i in range(n)]
    else:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[g] for g in drawn]) if groups is not None else drawn
        s = _safe(metric, tuple(a[idx] for a in arrays))
        if not np.isnan(s):
            stats.append(s)
    if not stats:
        return Interval(value, float("nan"), float("nan"), 0)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return Interval(value, float(low), float(high), len(stats))


def _safe(metric: Callable[..., float], arrays: tuple[np.ndarray, ...]) -> float:
    try:
        with warnings.catch_warnings():  # sklearn warns (and returns NaN) when y_true has one class
            warnings.simplefilter("ignore")
            return float(metric(*arrays))
    except ValueError:  # older sklearn raises instead
        return float("nan")
