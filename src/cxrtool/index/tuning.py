"""Recall measurement and search-depth tuning of a built index.

The search depth (nprobe / efSearch) is tuned until recall@10 on *held-out* queries (leave-one-out:
a query never counts itself) reaches the target, and separately for text queries (the prompt
bank's sentences embedded by the shards' model), which sit apart from the images they match.

"Reaches" means the lower end of a one-sided 95 % bootstrap bound over the tuning queries, not
the point estimate: stopping at the first depth whose estimate crosses the target picks a depth
that is below it on new queries about half the time (at 1M x 512, text depth 128 scored 0.950 on
the 304 bank sentences and 0.937 on 300 held-out report sentences; the bound picks 160: 0.956).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrtool.constants import N_RESAMPLES
from cxrtool.index.faiss_query import knn
from cxrtool.index.info import IndexInfo
from cxrtool.index.lazy_model import LazyModel
from cxrtool.index.store import RowStore

if TYPE_CHECKING:
    from cxrtool.model.dual import DualEncoder

log = logging.getLogger(__name__)

RECALL_K = 10
RECALL_QUERIES = 500
CONFIDENCE = 0.95  # one-sided: the tuned depth's recall is >= the target with this confidence


def _exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force top-k positions; ``vectors`` may be memory-mapped (read in place: an index
    over it would be a second copy, 4 GB at 1M x 1,024)."""
    import faiss

    return faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), vectors, k, faiss.METRIC_INNER_PRODUCT)[1]


def recall_curve(index, store: RowStore, vectors: np.ndarray, info: IndexInfo, depths: list[tuple[int, int]],
                 queries: np.ndarray | None = None, seed: int = 1) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield each query's recall@10 for each (nprobe, efSearch) in ``depths`` (lazily: a caller
    may stop early).

    Without ``queries``, on leave-one-out queries: stored vectors whose own id is removed from
    both the exact and the approximate answers, so each stands for a new image rather than a
    self-match (autofaiss measures with self-matches, which flatters the index). With ``queries``
    (e.g. text embeddings), on those as given."""
    n = len(vectors)
    k = min(RECALL_K, n - 1)
    if queries is None:
        qpos = np.random.default_rng(seed).choice(n, size=min(RECALL_QUERIES, max(1, n // 10)), replace=False)
        queries = vectors[qpos]
    else:
        qpos = np.full(len(queries), -1)
    truth = _exact_neighbours(vectors, np.ascontiguousarray(queries, dtype=np.float32), k + 1)
    truth_sets = [set(row[row != p][:k].tolist()) for row, p in zip(truth, qpos, strict=True)]
    for nprobe, ef in depths:
        _, pos = knn(index, store, queries, k + 1, info, nprobe=nprobe, ef_search=ef)
        hits = [len(t & set(row[row != p][:k].tolist())) for t, row, p in zip(truth_sets, pos, qpos, strict=True)]
        yield nprobe, ef, np.asarray(hits, dtype=np.float64) / k


def lower_bound(per_query: np.ndarray, seed: int = 0) -> float:
    """The one-sided ``CONFIDENCE`` lower bound of mean recall: a percentile of the mean over
    bootstrap resamples of the queries (they, not the vectors, are the sample).

    The same figure as ``evaluate.bootstrap.bootstrap_ci(np.mean, per_query, level=0.90).low``
    (same seed, resamples and percentile; checked equal), written out here because importing the
    ``cxrtool.evaluate`` package pulls in torch, which would add seconds to every index build."""
    if len(per_query) < 2 or per_query.min() == per_query.max():
        return float(per_query.mean()) if len(per_query) else 0.0
    rng = np.random.default_rng(seed)
    means = per_query[rng.integers(0, len(per_query), (N_RESAMPLES, len(per_query)))].mean(axis=1)
    return float(np.quantile(means, 1 - CONFIDENCE))


# Depths tried: doublings up to 16, then steps of 1.25-1.33x (each step costs about as much more
# search time; a doubling could overshoot the target's depth by up to 2x, e.g. text 256 vs 160).
LADDER = (1, 2, 4, 8, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024,
          1280, 1536, 2048)


def search_depths(index, kind: str) -> list[tuple[int, int]]:
    """The (nprobe, efSearch) ladder tried for ``kind``, shallowest first."""
    import faiss

    if kind == "hnsw":
        return [(0, ef) for ef in LADDER if ef >= 16]
    nlist = faiss.extract_index_ivf(index).nlist
    depths = [(p, 0) for p in LADDER if p < nlist]
    return depths + [(min(nlist, LADDER[-1]), 0)]


def tune(index, store: RowStore, vectors: np.ndarray, info: IndexInfo, text_queries: np.ndarray | None) -> None:
    """Smallest search depths whose recall@10 reaches the target with ``CONFIDENCE`` (else the
    deepest tried): for held-out image queries, and for text queries when given. The recorded
    recall is the point estimate at that depth."""
    info.recall_queries = min(RECALL_QUERIES, max(1, len(vectors) // 10))
    if info.kind == "flat" or len(vectors) < 3:
        info.recall_at_10, info.recall_queries, info.text_recall_at_10 = 1.0, 0, None
        return
    depths = search_depths(index, info.kind)
    info.nprobe, info.ef_search, info.recall_at_10 = _first_reaching(
        recall_curve(index, store, vectors, info, depths), info.recall_target)
    if text_queries is None or not len(text_queries):
        deeper = (info.nprobe * 8, 0) if info.nprobe else (0, info.ef_search * 8)  # what text needed at 1M x 1,024
        deeper = min((d for d in depths if d >= deeper), default=depths[-1])
        info.text_nprobe, info.text_ef_search, info.text_recall_at_10, info.text_queries = *deeper, None, 0
        return
    info.text_queries = len(text_queries)
    start = depths.index((info.nprobe, info.ef_search))
    info.text_nprobe, info.text_ef_search, info.text_recall_at_10 = _first_reaching(
        recall_curve(index, store, vectors, info, depths[start:], queries=text_queries), info.recall_target)


def _first_reaching(curve: Iterator[tuple[int, int, np.ndarray]], target: float) -> tuple[int, int, float]:
    """(nprobe, efSearch, mean recall) of the first depth whose lower bound reaches ``target``,
    else of the deepest tried."""
    for point in curve:
        if lower_bound(point[2]) >= target:
            break
    nprobe, ef, per_query = point
    return nprobe, ef, round(float(per_query.mean()), 4)


def bank_sentences() -> list[str]:
    """Every sentence of the prompt bank: positive, negative, uncertain and bilateral ones, and the
    sided templates for both sides (304 in the bundled bank). Report-like negations ("no pleural
    effusion.") are in: real queries and report sentences have them too."""
    from cxrtool.data.prompts import PromptBank

    out: set[str] = set()
    for p in PromptBank.load().labels.values():
        out |= {*p.positive, *p.negative, *p.uncertain, *p.bilateral}
        for side in ("left", "right"):
            out |= {*p.positive_for(side), *p.uncertain_for(side)}
    return sorted(out)


def tuning_text_queries(vector_id: str, model: LazyModel | DualEncoder | str | Path | None = None
                        ) -> np.ndarray | None:
    """Embeddings of the prompt bank's sentences (:func:`bank_sentences`) by the shards' model, to
    tune text-query depth; None when that model is not at hand (``model`` given or the default;
    vector ids must match). A :class:`LazyModel` keeps what it loads, for the caller's later use."""
    lazy = LazyModel.of(model)
    try:
        recorded = lazy.vector_id()  # a card to read: refuse a mismatch before loading weights
        if recorded is not None and recorded != vector_id:
            return None
        encoder = lazy.get()
        if encoder.card.vector_id != vector_id:
            return None
    except Exception as exc:  # no usable model: the text depth falls back to the 8x rule
        log.info("text-query tuning skipped: %s", exc)
        return None
    return encoder.encode_texts(bank_sentences())
