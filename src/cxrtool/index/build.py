"""Building and loading the FAISS index of a workspace.

Vectors are unit-norm, so inner product = cosine. Every index stores the shard ids (``IndexIDMap2``
or ``add_with_ids``), never bare positions. Index choice follows autofaiss' rules of thumb
(REFERENCE §3/§5): exact below 10k vectors, HNSW below 100k, IVF-Flat below 1M, IVF-PQ above;
IVF training uses a random sample (not the first vectors).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxrtool.embed.shards import read_shard_vectors, shard_paths
from cxrtool.errors import WorkspaceError
from cxrtool.workspace import Workspace

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"
KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")


@dataclass
class IndexInfo:
    kind: str
    factory: str
    count: int
    dim: int
    model_fingerprint: str
    shards: dict[str, int]  # shard file name -> size in bytes (staleness check)
    nprobe: int = 0
    build_seconds: float = 0.0


def choose_index_kind(n: int) -> str:
    if n < 10_000:
        return "flat"
    if n < 100_000:
        return "hnsw"
    if n < 1_000_000:
        return "ivf"
    return "ivfpq"


def _factory(kind: str, n: int, dim: int) -> tuple[str, int]:
    """FAISS factory string and nprobe for a kind and collection size."""
    if kind == "flat":
        return "Flat", 0
    if kind == "hnsw":
        return "HNSW32,Flat", 0
    lists = max(1, min(int(8 * math.sqrt(n)), n // 39 or 1))  # ~8·√n lists, >= 39 training points each
    nprobe = max(1, min(lists, int(math.sqrt(lists)) * 2))
    if kind == "ivf":
        return f"IVF{lists},Flat", nprobe
    # PQ: up to 64 sub-quantizers of >= 4 dimensions each (64 bytes/vector at d=512)
    m = next(m for m in (64, 48, 32, 24, 16, 8, 4, 2, 1) if dim % m == 0 and dim // m >= 4 or m == 1)
    return f"IVF{lists},PQ{m}x8", nprobe


def _shard_state(shards: Path) -> dict[str, int]:
    return {p.relative_to(shards).as_posix(): p.stat().st_size for p in shard_paths(shards)}


def build_index(workspace: str | Path | None = None, kind: str = "auto", target: str = "images") -> IndexInfo:
    """Build (or rebuild) the index of a workspace collection ("images" or "reports")."""
    import faiss

    if kind not in KINDS:
        raise WorkspaceError(f"unknown index kind {kind!r}", f"use one of {', '.join(KINDS)}")
    ws = Workspace.resolve(workspace)
    shards, index_dir = ws.collection(target)
    t0 = time.perf_counter()
    ids, vecs, fingerprint = read_shard_vectors(shards)
    if len(ids) == 0:
        hint = "run `cxrtool embed ARCHIVE` first" if target == "images" else "run `cxrtool embed-reports SOURCE` first"
        raise WorkspaceError(f"no embeddings in {shards}", hint)
    if len(np.unique(ids)) != len(ids):
        raise WorkspaceError(f"{shards}: duplicate ids across shards", "re-run the embedding with --overwrite")
    kind = choose_index_kind(len(ids)) if kind == "auto" else kind
    dim = vecs.shape[1]
    factory, nprobe = _factory(kind, len(ids), dim)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        # train on a random sample (autofaiss takes the first vectors, biased by archive order)
        nlist = faiss.extract_index_ivf(index).nlist
        rng = np.random.default_rng(0)
        index.train(vecs[rng.choice(len(vecs), size=min(len(vecs), 256 * nlist), replace=False)])
    if kind in ("flat", "hnsw"):
        index = faiss.IndexIDMap2(index)
    index.add_with_ids(vecs, ids)
    if nprobe:
        faiss.extract_index_ivf(index).nprobe = nprobe
    index_dir.mkdir(parents=True, exist_ok=True)
    tmp = index_dir / (INDEX_FILE + ".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(index_dir / INDEX_FILE)
    info = IndexInfo(kind, factory, int(len(ids)), int(dim), fingerprint, _shard_state(shards), nprobe,
                     round(time.perf_counter() - t0, 3))
    ws.write_json(index_dir / INFO_FILE, asdict(info))
    return info


def index_is_current(ws: Workspace, target: str = "images") -> bool:
    shards, index_dir = ws.collection(target)
    info = ws.read_json(index_dir / INFO_FILE)
    return bool(info) and (index_dir / INDEX_FILE).is_file() and info.get("shards") == _shard_state(shards)


def load_index(workspace: str | Path | None = None, rebuild_if_stale: bool = True, target: str = "images"):
    """(faiss index, IndexInfo); builds it first if missing or older than the shards."""
    import faiss

    ws = Workspace.resolve(workspace)
    _, index_dir = ws.collection(target)
    if not index_is_current(ws, target):
        if not rebuild_if_stale:
            raise WorkspaceError(f"the index in {index_dir} is missing or stale", "run `cxrtool index`")
        build_index(ws.root, target=target)
    info = IndexInfo(**ws.read_json(index_dir / INFO_FILE))
    index = faiss.read_index(str(index_dir / INDEX_FILE))
    if info.nprobe:
        faiss.extract_index_ivf(index).nprobe = info.nprobe
    return index, info
