"""Which FAISS index a collection gets, and its factory string (REFERENCE §3/§5, autofaiss' rules
with its weaknesses fixed): exact below 10k vectors, HNSW below 100k, IVF with 8-bit scalar-quantised
vectors and an exact re-rank above, and IVF-PQ (with OPQ) once those no longer fit the memory
budget. IVF-Flat (``ivf``) stays available by name. Pure arithmetic: no FAISS import.

Why IVF-SQ8 above 100k (measured at 1M x 1,024, docs/benchmarks.md): the same recall@10 as IVF-Flat
at every depth, for image and for text queries, a quarter of the memory, and a scan 1.4x (image
queries, nprobe 32) to 1.7x (text queries, nprobe 256) faster. Codes that drop dimensions or bits
(PQ, PCA, 1-bit RaBitQ) kept image recall but lost text queries (recall@10 0.38-0.76 after
re-ranking 300 candidates): the text-to-image signal lives in directions where the images vary
little, which those codes discard first."""

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
# SQ8 candidates re-ranked exactly: 8-bit codes order the candidates as float32 does (same recall@10
# at 1M), so the re-rank only makes the returned scores exact cosines; a small margin past k=10.
SQ_RERANK = 20


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


def bytes_per_vector(kind: str, dim: int) -> int:
    """Resident bytes per vector of ``kind`` (REFERENCE §5; measured at 1M x 1,024 in
    docs/benchmarks.md): float32 codes (4 per dimension), 1 per dimension for SQ8, the PQ code, plus
    the 8-byte id; HNSW adds its level-0 links (2M x 4 bytes); flat and HNSW keep an id map."""
    if kind == "flat":
        return 4 * dim + 8 + 32
    if kind == "hnsw":
        return 4 * dim + 8 * HNSW_M + 8 + 32
    if kind == "ivf":
        return 4 * dim + 8
    if kind == "ivfsq":
        return dim + 8
    return pq_bytes(dim) + 8


def estimate_bytes(kind: str, n: int, dim: int) -> int:
    """Resident size of an index of ``kind`` (vectors, plus the IVF centroids and the OPQ matrix)."""
    fixed = 4 * dim * ivf_lists(n) if kind in ("ivf", "ivfsq", "ivfpq") else 0
    if kind == "ivfpq":
        fixed += 4 * dim * dim
    return n * bytes_per_vector(kind, dim) + fixed


def choose_index_kind(n: int, dim: int = 512, memory_budget: int | None = None) -> str:
    """By size first (exact < 10k, HNSW < 100k, else IVF-SQ8 with an exact re-rank), then the first
    kind in order of decreasing accuracy that fits the budget (IVF-PQ when even 8-bit codes no longer
    fit). IVF-Flat is not chosen automatically: IVF-SQ8 gave the same recall, faster, in a quarter of
    the memory (module docstring)."""
    budget = memory_budget or default_memory_budget()
    preferred = "flat" if n < 10_000 else "hnsw" if n < 100_000 else "ivfsq"
    order = ["flat", "hnsw", "ivfsq", "ivfpq"]
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
    if kind == "ivfsq":
        return f"IVF{lists},SQ8"
    m = pq_bytes(dim, gpu)
    return (f"OPQ{m}_{dim}," if opq else "") + f"IVF{lists},PQ{m}x8"
