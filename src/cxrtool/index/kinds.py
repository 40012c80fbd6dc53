"""Which FAISS index a collection gets, and its factory string (REFERENCE §3/§5, autofaiss' rules
with its weaknesses fixed): exact below 10k vectors, HNSW below 100k, IVF-Flat above, and IVF-PQ
(with OPQ) once full vectors no longer fit the memory budget. Pure arithmetic: no FAISS import."""

from __future__ import annotations

import math
import os

from cxrtool.constants import INDEX_KINDS

KINDS = INDEX_KINDS  # what `cxrtool index --kind` accepts
HNSW_M = 32
GPU_MAX_PQ_BYTES = 48  # FAISS GPU IVFPQ limit on code size (REFERENCE §3)
# PQ candidates re-ranked exactly. On 1M crowded X-ray-like vectors (64-byte codes), re-ranking 100
# capped recall@10 at ~0.83 whatever the nprobe; 1,000 reached 0.97 at nprobe 64 for ~1 ms more.
PQ_RERANK = 1000


def default_memory_budget() -> int:
    """Half the machine's RAM: the index shares it with the model and the metadata."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.5)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def pq_bytes(dim: int, gpu: bool = False) -> int:
    """PQ sub-quantizers (= bytes per code): one per 8 dimensions (64 bytes at d=512), at most 64
    (48 on GPU), dividing dim. Narrower sub-spaces (4 dims) train ~2x slower in FAISS' k-means."""
    limit = GPU_MAX_PQ_BYTES if gpu else 64
    return next(m for m in range(min(limit, max(1, dim // 8)), 0, -1) if dim % m == 0)


def estimate_bytes(kind: str, n: int, dim: int) -> int:
    """Resident size of an index of ``kind`` (REFERENCE §5: HNSW ≈ 4d + 8M bytes per vector)."""
    if kind in ("flat", "ivf"):
        return n * (4 * dim + 8)
    if kind == "hnsw":
        return n * (4 * dim + 8 * HNSW_M + 8)
    return n * (pq_bytes(dim) + 8) + 4 * dim * dim  # codes + ids + OPQ matrix


def choose_index_kind(n: int, dim: int = 512, memory_budget: int | None = None) -> str:
    """By size first (exact < 10k, HNSW < 100k, else IVF-Flat), then the first kind in order of
    decreasing accuracy that fits the budget (IVF-PQ when full vectors no longer fit). IVF-Flat
    stays the choice while it fits: at 1M x 512 (2 GB) it gave exact scores and higher recall
    at lower latency than IVF-PQ on the search benchmark (docs/benchmarks.md)."""
    budget = memory_budget or default_memory_budget()
    preferred = "flat" if n < 10_000 else "hnsw" if n < 100_000 else "ivf"
    order = ["flat", "hnsw", "ivf", "ivfpq"]
    for kind in order[order.index(preferred):]:
        if estimate_bytes(kind, n, dim) <= budget:
            return kind
    return "ivfpq"


def ivf_lists(n: int) -> int:
    """4·√n lists rounded to a power of two (REFERENCE §5: 4–16·√n), >= 39 training points each."""
    lists = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return int(max(1, min(lists, n // 39 or 1)))


def factory_string(kind: str, n: int, dim: int, opq: bool = True, gpu: bool = False) -> str:
    """The ``faiss.index_factory`` string of ``kind`` for ``n`` vectors of ``dim``."""
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{HNSW_M},Flat"
    lists = ivf_lists(n)
    if kind == "ivf":
        return f"IVF{lists},Flat"
    m = pq_bytes(dim, gpu)
    return (f"OPQ{m}_{dim}," if opq else "") + f"IVF{lists},PQ{m}x8"
