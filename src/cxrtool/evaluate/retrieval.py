"""Text-query retrieval metrics against image labels: precision@k vs base rate, AUROC."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrtool.model.dual import DualEncoder


def precision_at_k(relevant_in_rank_order: Sequence[bool], k: int) -> float:
    top = list(relevant_in_rank_order)[:k]
    return sum(top) / k if k else 0.0


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Rank-based (Mann-Whitney) AUROC with ties averaged; NaN if one class is empty."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def label_query_report(model: DualEncoder, image_vectors: np.ndarray, labels: dict[str, np.ndarray],
                       queries: dict[str, str], k: int = 5) -> list[dict]:
    """Per label: the query's precision@k over the images, the label's base rate, and AUROC."""
    rows = []
    texts = model.encode_texts([queries[name] for name in queries])
    for (name, query), q in zip(queries.items(), texts, strict=True):
        positive = labels[name].astype(bool)
        scores = image_vectors @ q
        ranked = positive[np.argsort(-scores, kind="mergesort")]
        rows.append({"label": name, "query": query, "positives": int(positive.sum()), "n": int(len(positive)),
                     "base_rate": round(float(positive.mean()), 4), f"precision@{k}": precision_at_k(ranked, k),
                     "auroc": round(auroc(scores, positive), 4)})
    return rows
