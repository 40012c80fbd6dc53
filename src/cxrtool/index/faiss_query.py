"""Query side of a FAISS index: search parameters per index type, ``knn`` with the exact re-rank
(PQ, SQ8), the lists a filtered search scans, and the GPU move. Shared by search and by the
build's recall measurement."""

from __future__ import annotations

import logging
import math

import numpy as np

from cxrtool.index.info import IndexInfo
from cxrtool.index.store import RowStore

log = logging.getLogger(__name__)


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def to_gpu(index):
    """A GPU copy of an IVF index for training/adding, or None (with a log line) if FAISS cannot."""
    import faiss

    try:
        res = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(res, 0, index)
        gpu.referenced_objects = [res]
        return gpu
    except Exception as exc:  # no GPU build, unsupported index type, out of memory ...
        log.warning("faiss GPU unavailable for this index (%s); building on the CPU", exc)
        return None


def search_params(index, nprobe: int = 0, ef_search: int = 0, selector=None):
    """FAISS search parameters for this index type, with an optional id selector (pre-filter)."""
    import faiss

    inner = index
    if isinstance(inner, faiss.IndexIDMap2 | faiss.IndexIDMap):
        inner = faiss.downcast_index(inner.index)
    wrap = isinstance(inner, faiss.IndexPreTransform)
    if wrap:
        inner = faiss.downcast_index(inner.index)
    if nprobe:
        params = faiss.SearchParametersIVF(nprobe=nprobe)
    elif ef_search or isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(efSearch=ef_search or 64)
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    if wrap:
        outer = faiss.SearchParametersPreTransform()
        outer.index_params = params
        outer.referenced_objects = [params]  # keep the inner object alive on the Python side
        return outer
    return params


# HNSW with a filter keeping a fraction s of the rows: efSearch grows as 1/s (capped), so the beam
# meets as many matching rows as an unfiltered search meets rows. (IVF indexes plan by list: below.)
EF_SEARCH_MAX = 4096


def search_depth(info: IndexInfo, text: bool = False, fraction: float = 1.0) -> dict[str, int]:
    """nprobe / efSearch for a query: the tuned image depth, or the text depth for text embeddings
    (``IndexInfo.text_nprobe``); efSearch deepened for a filter that keeps ``fraction`` of the rows."""
    nprobe = (text and info.text_nprobe) or info.nprobe
    ef_search = (text and info.text_ef_search) or info.ef_search
    grow = 1.0 / max(fraction, 1e-6) if fraction < 1 else 1.0
    return {"nprobe": nprobe, "ef_search": min(EF_SEARCH_MAX, math.ceil(ef_search * grow))}


# A filtered IVF search scans lists until they hold this many times the rows an unfiltered search
# scores. 1x was enough for filters that keep rows evenly (1M x 1,024: recall@10 0.99-1.00 for 40 %
# to 6.7 % of the rows) but not for one that follows the clusters (tests: 0.85 at 1x, 0.96 at 2x).
FILTER_ROWS_FACTOR = 2


def ivf_rows_per_list(index, store: RowStore) -> np.ndarray | None:
    """The inverted list of every stored row (by position), read once from the index's own lists;
    None for an index without lists. What a filter's plan counts its matching rows with."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    lists = ivf.invlists
    sizes = np.array([lists.list_size(i) for i in range(ivf.nlist)], np.int64)
    ids = np.concatenate([faiss.rev_swig_ptr(lists.get_ids(i), int(n)).copy() for i, n in enumerate(sizes) if n]
                         or [np.zeros(0, np.int64)])
    list_of = np.full(len(store), -1, np.int32)
    pos = store.positions(ids)
    list_of[pos[pos >= 0]] = np.repeat(np.arange(ivf.nlist, dtype=np.int32), sizes)[pos >= 0]
    return list_of


def filtered_lists(index, queries: np.ndarray, matching: np.ndarray, wanted: int, at_least: int = 1
                   ) -> np.ndarray:
    """Per query, the nearest inverted lists (centroid order) up to the first prefix that holds
    ``wanted`` rows matching the filter (``matching``: matching rows per list), and no fewer than
    ``at_least`` lists (the query's own depth, grown for wide filters: ``Index.search_vectors``);
    -1 pads the rest.

    Why by count and not a fixed depth: a filter keeps its rows unevenly (a view or a site sits in
    some clusters more than others), so the lists that hold a query's nearest matching rows can lie
    far down the list order; counting matching rows finds them at any selectivity. ``wanted``:
    ``FILTER_ROWS_FACTOR`` times the rows an unfiltered image search scores (text queries too:
    at their own, deeper list depth they reached recall@10 0.95-0.97 under filters keeping 40 %
    to 10 % of 1M rows; the matching-row count carries them further under narrower filters)."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    queries = _transformed(index, queries)
    order = ivf.quantizer.search(queries, ivf.nlist)[1]
    held = np.cumsum(matching[np.maximum(order, 0)] * (order >= 0), axis=1)
    width = np.minimum(np.maximum((held < wanted).sum(axis=1) + 1, at_least), ivf.nlist)
    assign = np.where(np.arange(ivf.nlist) < width[:, None], order, -1)
    return np.ascontiguousarray(assign[:, : int(width.max())])


def _transformed(index, queries: np.ndarray) -> np.ndarray:
    """Queries as the inverted lists see them (OPQ-rotated for ``ivfpq``)."""
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            queries = faiss.downcast_VectorTransform(index.chain.at(i)).apply(queries)
    return queries


def search_lists(index, queries: np.ndarray, assign: np.ndarray, k: int, selector=None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) like ``index.search``, scanning exactly the lists in ``assign`` (-1: none)
    through FAISS ``search_preassigned``, with an optional id selector."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    queries = _transformed(index, queries)
    if ivf.by_residual:  # codes are residuals (PQ): the scanner adds the query-to-centroid term itself
        cent = ivf.quantizer.reconstruct_batch(np.maximum(assign, 0).ravel()).reshape(*assign.shape, -1)
        coarse = np.ascontiguousarray(np.einsum("qpd,qd->qp", cent, queries), dtype=np.float32)
    else:
        coarse = np.zeros(assign.shape, np.float32)
    params = faiss.SearchParametersIVF(nprobe=assign.shape[1])
    if selector is not None:
        params.sel = selector
    scores = np.empty((len(queries), k), np.float32)
    ids = np.empty((len(queries), k), np.int64)
    ptr = faiss.swig_ptr
    ivf.search_preassigned_c(len(queries), ptr(queries), k, ptr(assign), ptr(coarse), ptr(scores), ptr(ids),
                             False, params)
    return scores, ids


def knn(index, store: RowStore, queries: np.ndarray, k: int, info: IndexInfo, selector=None,
        nprobe: int | None = None, ef_search: int | None = None, assign: np.ndarray | None = None
        ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the top ``k`` per query; -1 where fewer exist. PQ and SQ8 candidates
    are re-ranked with the exact stored vectors, so every returned score is an exact cosine.
    ``assign`` (IVF): the lists to scan per query (:func:`filtered_lists`) instead of ``nprobe``."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    depth = max(k, info.rerank) if info.rerank else k
    depth = min(depth, max(1, len(store)))
    _parallel_over_lists(index, single=len(queries) == 1)
    if assign is not None:
        scores, ids = search_lists(index, queries, assign, depth, selector)
    else:
        params = search_params(index, info.nprobe if nprobe is None else nprobe,
                               info.ef_search if ef_search is None else ef_search, selector)
        scores, ids = index.search(queries, depth, params=params)
    positions = np.where(ids >= 0, store.positions(np.where(ids >= 0, ids, 0).ravel()).reshape(ids.shape), -1)
    if info.rerank:
        exact = np.full(positions.shape, -np.inf, np.float32)
        valid = positions >= 0
        if valid.any():
            vecs = store.vectors(positions[valid])
            rows = np.nonzero(valid)[0]
            exact[valid] = np.einsum("ij,ij->i", vecs, queries[rows])
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(exact, order, axis=1)
        positions = np.take_along_axis(positions, order, axis=1)
        scores[positions < 0] = -np.inf
    return scores[:, :k], positions[:, :k]


def _parallel_over_lists(index, single: bool) -> None:
    """FAISS IVF parallelises over queries by default, so one query uses one core. For a single
    query, split its inverted lists over the threads instead (measured at 1M x 512 on 2 cores:
    p50 2.95 -> 1.62 ms at nprobe 64, 19.9 -> 10.5 ms at nprobe 512); batches keep the default."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return
    ivf.parallel_mode = 1 if single else 0
