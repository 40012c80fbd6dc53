"""Retrieval metrics: label-query precision@k, and image<->text Recall@K / ranks with de-duplicated texts.

Texts are de-duplicated before ranking (CXR-CLIP): label-converted datasets give many studies the
same sentence, and without de-duplication an image's "correct" text would compete with identical
copies of itself. Image->text: the rank of the image's own text among the unique texts.
Text->image: for each unique text, the rank of its best-scoring matching image (all images sharing
that text count as correct). Rank = 1 + the number of wrong candidates scoring strictly higher.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrtool.evaluate.classification import auroc
from cxrtool.model.dual import DualEncoder

RECALL_KS = (1, 5, 10)


def precision_at_k(relevant_in_rank_order: Sequence[bool], k: int) -> float:
    top = list(relevant_in_rank_order)[:k]
    return sum(top) / k if k else 0.0


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


def dedupe_texts(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(unique texts in first-seen order, index of each input's text in that list)."""
    index: dict[str, int] = {}
    ids = np.array([index.setdefault(" ".join(t.split()), len(index)) for t in texts], dtype=np.int64)
    return list(index), ids


def image_to_text_ranks(image_vectors: np.ndarray, text_vectors: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
    """1-based rank of each image's own text among the unique texts."""
    sims = np.asarray(image_vectors, np.float32) @ np.asarray(text_vectors, np.float32).T
    own = sims[np.arange(len(sims)), text_ids]
    return 1 + (sims > own[:, None]).sum(axis=1)


def text_to_image_ranks(image_vectors: np.ndarray, text_vectors: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
    """1-based rank, per unique text, of its best-scoring matching image among all images."""
    sims = np.asarray(text_vectors, np.float32) @ np.asarray(image_vectors, np.float32).T  # U x N
    match = np.arange(len(text_vectors))[:, None] == np.asarray(text_ids)[None, :]
    best = np.where(match, sims, -np.inf).max(axis=1)
    return 1 + ((sims > best[:, None]) & ~match).sum(axis=1)


def rank_summary(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS) -> dict:
    """Recall@K for each K, and mean/median rank."""
    ranks = np.asarray(ranks)
    out = {f"recall@{k}": round(float((ranks <= k).mean()), 4) for k in ks}
    out.update({"mean_rank": round(float(ranks.mean()), 2), "median_rank": float(np.median(ranks)),
                "queries": int(len(ranks))})
    return out


def retrieval_report(image_vectors: np.ndarray, texts: Sequence[str], encode_texts, ks: Sequence[int] = RECALL_KS
                     ) -> dict:
    """Both directions over de-duplicated texts; ``encode_texts`` maps strings to unit vectors."""
    unique, ids = dedupe_texts(texts)
    text_vectors = encode_texts(unique)
    return {"images": int(len(ids)), "unique_texts": len(unique),
            "image_to_text": rank_summary(image_to_text_ranks(image_vectors, text_vectors, ids), ks),
            "text_to_image": rank_summary(text_to_image_ranks(image_vectors, text_vectors, ids), ks)}
