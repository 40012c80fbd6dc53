"""Building the FAISS index of a workspace collection from its shards.

Vectors are unit-norm, so inner product = cosine. The index stores the stable shard ids
(``IndexIDMap2`` or IVF ids), never positions. Choice of index (REFERENCE §3/§5, autofaiss' rules
with its weaknesses fixed): exact below 10k vectors, HNSW below 100k, IVF-Flat above, and IVF-PQ
(with OPQ) once full vectors no longer fit the memory budget.
IVF is trained on a random sample, not the first vectors. The search depth (nprobe / efSearch)
is tuned until recall@10 on *held-out* queries (leave-one-out: a query never counts itself)
reaches the target, and that recall goes into ``index.json`` with the build parameters and
timings. PQ results are re-ranked exactly from the stored vectors (``store.py``). New shards
are added incrementally; vectors from two different models are refused.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cxrtool.embed.shards import shard_paths
from cxrtool.errors import WorkspaceError
from cxrtool.index.store import RowStore, write_part
from cxrtool.workspace import Workspace

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"
KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
RECALL_K = 10
RECALL_QUERIES = 500
HNSW_M = 32
GPU_MAX_PQ_BYTES = 48  # FAISS GPU IVFPQ limit on code size (REFERENCE §3)
# PQ candidates re-ranked exactly. On 1M crowded X-ray-like vectors (64-byte codes), re-ranking 100
# capped recall@10 at ~0.83 whatever the nprobe; 1,000 reached 0.97 at nprobe 64 for ~1 ms more.
PQ_RERANK = 1000


@dataclass
class IndexInfo:
    """What ``index.json`` records: the build, its parameters and its measured quality."""

    kind: str
    factory: str
    count: int
    dim: int
    model_fingerprint: str
    shards: dict[str, int]  # shard file -> size in bytes (what the index holds; staleness check)
    parts: list[int] = field(default_factory=list)  # rows/vectors parts in the index folder
    nprobe: int = 0
    ef_search: int = 0
    rerank: int = 0  # PQ: candidates re-ranked exactly (0: scores are exact already)
    recall_at_10: float = 1.0  # measured on held-out queries (1.0 for the exact index)
    recall_queries: int = 0
    # text queries sit apart from the images they match (the modality gap) and need a deeper
    # search than image queries: tuned separately on the prompt bank's sentences when the model
    # of the shards is at hand, else a conservative 4x the image depth
    text_nprobe: int = 0
    text_ef_search: int = 0
    text_recall_at_10: float | None = None
    text_queries: int = 0
    recall_target: float = 0.95
    memory_budget_bytes: int = 0
    index_bytes: int = 0
    trained_on: int = 0
    device: str = "cpu"
    build_seconds: float = 0.0
    train_seconds: float = 0.0
    add_seconds: float = 0.0
    tune_seconds: float = 0.0
    built_at: str = ""
    incremental_adds: int = 0
    rebuild_suggested: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- choosing the index


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
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{HNSW_M},Flat"
    lists = ivf_lists(n)
    if kind == "ivf":
        return f"IVF{lists},Flat"
    m = pq_bytes(dim, gpu)
    return (f"OPQ{m}_{dim}," if opq else "") + f"IVF{lists},PQ{m}x8"


# --------------------------------------------------------------------------------- reading shards


def _shard_state(shards: Path) -> dict[str, int]:
    return {p.relative_to(shards).as_posix(): p.stat().st_size for p in shard_paths(shards)}


def read_collection(shards: Path, names: list[str], fingerprint: str | None = None, progress: bool = False
                    ) -> tuple[pa.Table, np.ndarray, str]:
    """(metadata rows, float32 vectors, model fingerprint) of the named shards; refuses shards
    embedded with different models (their vectors live in different spaces)."""
    tables, vectors = [], []
    from tqdm import tqdm

    for name in tqdm(names, desc="index: reading shards", unit="shard", disable=not progress or len(names) < 8):
        table = pq.read_table(shards / name)
        got = (table.schema.metadata or {}).get(b"model_fingerprint", b"").decode()
        if fingerprint is None:
            fingerprint = got
        elif got != fingerprint:
            raise WorkspaceError(
                f"{shards / name} was embedded with another model ({got or 'unknown'}) than the rest "
                f"({fingerprint or 'unknown'}); vectors of two models cannot share one index",
                "embed each model into its own --workspace, or re-embed with --overwrite")
        emb = table.column("embedding").combine_chunks()
        vectors.append(emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), -1))
        tables.append(table.drop_columns(["embedding"]).replace_schema_metadata(None))
    if not tables:
        return pa.table({"id": pa.array([], pa.int64())}), np.zeros((0, 0), np.float32), fingerprint or ""
    return pa.concat_tables(tables, promote_options="default"), np.concatenate(vectors), fingerprint or ""


# -------------------------------------------------------------------------------- search helpers


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


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


def knn(index, store: RowStore, queries: np.ndarray, k: int, info: IndexInfo, selector=None,
        nprobe: int | None = None, ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the top ``k`` per query; -1 where fewer exist. PQ candidates are
    re-ranked with the exact stored vectors, so every returned score is an exact cosine."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    depth = max(k, info.rerank) if info.rerank else k
    depth = min(depth, max(1, len(store)))
    params = search_params(index, info.nprobe if nprobe is None else nprobe,
                           info.ef_search if ef_search is None else ef_search, selector)
    _parallel_over_lists(index, single=len(queries) == 1)
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


# ---------------------------------------------------------------------------------- recall/tuning


def _exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat.search(queries, k)[1]


def recall_curve(index, store: RowStore, vectors: np.ndarray, info: IndexInfo, depths: list[tuple[int, int]],
                 queries: np.ndarray | None = None, seed: int = 1) -> Iterator[tuple[int, int, float]]:
    """Yield recall@10 for each (nprobe, efSearch) in ``depths`` (lazily: a caller may stop early).

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
        hits = sum(len(t & set(row[row != p][:k].tolist())) for t, row, p in zip(truth_sets, pos, qpos, strict=True))
        yield nprobe, ef, hits / (k * len(queries))


def _depths(index, kind: str) -> list[tuple[int, int]]:
    import faiss

    if kind == "hnsw":
        return [(0, ef) for ef in (16, 32, 64, 128, 256, 512, 1024)]
    nlist = faiss.extract_index_ivf(index).nlist
    depths = [(p, 0) for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048) if p < nlist]
    return depths + [(min(nlist, 2048), 0)]


def _tune(index, store: RowStore, vectors: np.ndarray, info: IndexInfo, text_queries: np.ndarray | None) -> None:
    """Smallest search depths whose recall@10 reaches the target (else the deepest tried): for
    held-out image queries, and for text queries when given."""
    info.recall_queries = min(RECALL_QUERIES, max(1, len(vectors) // 10))
    if info.kind == "flat" or len(vectors) < 3:
        info.recall_at_10, info.recall_queries, info.text_recall_at_10 = 1.0, 0, None
        return
    depths = _depths(index, info.kind)
    for nprobe, ef, recall in recall_curve(index, store, vectors, info, depths):
        info.nprobe, info.ef_search, info.recall_at_10 = nprobe, ef, round(recall, 4)
        if recall >= info.recall_target:
            break
    start = depths.index((info.nprobe, info.ef_search))
    if text_queries is None or not len(text_queries):
        deeper = depths[min(start + 2, len(depths) - 1)]  # 4x: what text queries needed in our benchmark
        info.text_nprobe, info.text_ef_search, info.text_recall_at_10, info.text_queries = *deeper, None, 0
        return
    info.text_queries = len(text_queries)
    for nprobe, ef, recall in recall_curve(index, store, vectors, info, depths[start:], queries=text_queries):
        info.text_nprobe, info.text_ef_search, info.text_recall_at_10 = nprobe, ef, round(recall, 4)
        if recall >= info.recall_target:
            break


def tuning_text_queries(fingerprint: str, model=None) -> np.ndarray | None:
    """Embeddings of the prompt bank's sentences by the shards' model, to tune text-query depth;
    None when that model is not at hand (``model`` given or the default; fingerprints must match)."""
    from cxrtool.data.prompts import PromptBank
    from cxrtool.model.directory import load_model, peek_fingerprint
    from cxrtool.model.dual import DualEncoder

    try:
        if not isinstance(model, DualEncoder):
            recorded = peek_fingerprint(model)  # a card to read: refuse a mismatch before loading weights
            if recorded is not None and recorded != fingerprint:
                return None
            model = load_model(model)
        if model.card.vector_id != fingerprint:
            return None
    except Exception as exc:  # no usable model: the text depth falls back to the 4x rule
        log.info("text-query tuning skipped: %s", exc)
        return None
    bank = PromptBank.load()
    sentences = sorted({t for p in bank.labels.values() for t in (*p.positive, *p.uncertain)})
    return model.encode_texts(sentences)


# ----------------------------------------------------------------------------------------- build


def build_index(
    workspace: str | Path | None = None,
    kind: str = "auto",
    target: str = "images",
    rebuild: bool = False,
    memory_budget: int | None = None,
    recall_target: float = 0.95,
    opq: bool = True,
    device: str = "auto",
    model=None,
    progress: bool = False,
) -> IndexInfo:
    """Build the index of a collection ("images" or "reports"), or bring it up to date.

    With an index already there, new shards are added to it (same kind, no retraining); a shard
    that changed or disappeared, another ``kind``, or ``rebuild=True`` builds from scratch.
    ``device``: "auto" (a GPU when faiss has one), "cpu" or "cuda". ``model`` (a DualEncoder or
    model directory; default: the default model) embeds the prompt bank to tune the depth of text
    queries, if it is the model of the shards.
    """
    if kind not in KINDS:
        raise WorkspaceError(f"unknown index kind {kind!r}", f"use one of {', '.join(KINDS)}")
    if not 0 < recall_target <= 1:
        raise WorkspaceError(f"recall target {recall_target} is not in (0, 1]")
    ws = Workspace.resolve(workspace)
    shards, index_dir = ws.collection(target)
    state = _shard_state(shards)
    if not state:
        hint = "run `cxrtool embed ARCHIVE` first" if target == "images" else "run `cxrtool embed-reports SOURCE` first"
        raise WorkspaceError(f"no embeddings in {shards}", hint)
    old = read_info(index_dir)
    if old and not rebuild and (index_dir / INDEX_FILE).is_file() and kind in ("auto", old.kind):
        if old.shards == state:
            return old
        if all(state.get(name) == size for name, size in old.shards.items()):
            return _add_shards(index_dir, shards, old, state, target, model, progress)
    return _build(ws, index_dir, shards, state, kind, memory_budget, recall_target, opq, device, target, model,
                  progress)


def read_info(index_dir: Path) -> IndexInfo | None:
    """The index's info, or None when missing or written by an older cxrtool (then: rebuild)."""
    path = index_dir / INFO_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    known = {f.name for f in fields(IndexInfo)}
    if not {"kind", "parts"} <= set(data) or not set(data) <= known:
        return None
    return IndexInfo(**data)


def _training_effort(index) -> None:
    """Fewer k-means / OPQ iterations than FAISS' defaults (25 / 50): on a CPU those dominate the
    build (tens of minutes at 1M x 512 on 2 cores), while recall is recovered by the tuned depth
    and the exact re-rank (measured and recorded in index.json either way)."""
    import faiss

    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                vt.niter = 12
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexIVF):
        index.cp.niter = 12
        if isinstance(index, faiss.IndexIVFPQ):
            index.pq.cp.niter = 12


def _stage(progress: bool, what: str) -> None:
    """One line per long build stage (FAISS' C++ calls give no progress of their own)."""
    if progress:
        from tqdm import tqdm

        tqdm.write(f"index: {what} ...", file=sys.stderr)


def _write_index(index, index_dir: Path) -> int:
    import faiss

    tmp = index_dir / (INDEX_FILE + ".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(index_dir / INDEX_FILE)
    return (index_dir / INDEX_FILE).stat().st_size


def _build(ws: Workspace, index_dir: Path, shards: Path, state: dict[str, int], kind: str, memory_budget: int | None,
           recall_target: float, opq: bool, device: str, target: str, model, progress: bool) -> IndexInfo:
    import faiss

    t0 = time.perf_counter()
    rows, vecs, fingerprint = read_collection(shards, sorted(state), progress=progress)
    ids = rows.column("id").to_numpy()
    if len(np.unique(ids)) != len(ids):
        raise WorkspaceError(f"{shards}: the same id appears in two shards",
                             "check the workspace with `cxrtool validate`; re-embed with --overwrite")
    n, dim = vecs.shape
    budget = memory_budget or default_memory_budget()
    kind = choose_index_kind(n, dim, budget) if kind == "auto" else kind
    use_gpu = (device == "cuda" or (device == "auto" and gpu_available())) and kind in ("ivf", "ivfpq")
    factory = factory_string(kind, n, dim, opq=opq, gpu=use_gpu)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    _training_effort(index)
    info = IndexInfo(kind, factory, int(n), int(dim), fingerprint, state, parts=[0], recall_target=recall_target,
                     memory_budget_bytes=int(budget), device="cuda" if use_gpu else "cpu",
                     rerank=PQ_RERANK if kind == "ivfpq" else 0,
                     built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    work = to_gpu(index) if use_gpu else index
    if work is None:
        work, info.device = index, "cpu"
    t = time.perf_counter()
    if not index.is_trained:  # a random sample, not the first vectors (biased by archive order)
        nlist = faiss.extract_index_ivf(index).nlist
        size = min(n, max(39 * nlist, 20_000), 256 * nlist)
        sample = vecs[np.random.default_rng(0).choice(n, size=size, replace=False)]
        _stage(progress, f"training {factory} on {size} vectors")
        work.train(sample)
        info.trained_on = int(size)
    info.train_seconds = round(time.perf_counter() - t, 3)
    if kind in ("flat", "hnsw"):
        work = faiss.IndexIDMap2(work)
    t = time.perf_counter()
    _stage(progress, f"adding {n} vectors")
    work.add_with_ids(vecs, ids)
    info.add_seconds = round(time.perf_counter() - t, 3)
    index = faiss.index_gpu_to_cpu(work) if info.device == "cuda" else work
    # write into a fresh folder, then swap it in: a killed build leaves the old index usable
    tmp_dir = index_dir.with_name(index_dir.name + ".building")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    write_part(tmp_dir, 0, rows, vecs)
    store = RowStore(tmp_dir, [0])
    t = time.perf_counter()
    text_queries = tuning_text_queries(fingerprint, model) if kind != "flat" and target == "images" else None
    _stage(progress, "measuring recall on held-out queries")
    _tune(index, store, vecs, info, text_queries)
    info.tune_seconds = round(time.perf_counter() - t, 3)
    info.index_bytes = _write_index(index, tmp_dir)
    info.build_seconds = round(time.perf_counter() - t0, 3)
    ws.write_json(tmp_dir / INFO_FILE, info.to_dict())
    old_dir = index_dir.with_name(index_dir.name + ".old")
    shutil.rmtree(old_dir, ignore_errors=True)
    if index_dir.exists():
        index_dir.rename(old_dir)
    tmp_dir.rename(index_dir)
    shutil.rmtree(old_dir, ignore_errors=True)
    return info


def _add_shards(index_dir: Path, shards: Path, info: IndexInfo, state: dict[str, int], target: str,
                model, progress: bool = False) -> IndexInfo:
    """Add the shards written since the last build: no retraining, ids checked for clashes."""
    import faiss

    t0 = time.perf_counter()
    new = sorted(set(state) - set(info.shards))
    rows, vecs, _ = read_collection(shards, new, fingerprint=info.model_fingerprint, progress=progress)
    store = RowStore(index_dir, info.parts)
    ids = rows.column("id").to_numpy()
    clash = (store.positions(ids) >= 0).sum() + (len(ids) - len(np.unique(ids)))
    if clash:
        raise WorkspaceError(f"{clash} id(s) in the new shards are already indexed or repeated",
                             "check the workspace with `cxrtool validate`; rebuild with `cxrtool index --rebuild`")
    index = faiss.read_index(str(index_dir / INDEX_FILE))
    t = time.perf_counter()
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vecs), ids)
    part = max(info.parts) + 1
    write_part(index_dir, part, rows, vecs)
    info.parts = [*info.parts, part]
    info.count += int(len(ids))
    info.shards = state
    info.incremental_adds += 1
    info.add_seconds = round(time.perf_counter() - t, 3)
    preferred = choose_index_kind(info.count, info.dim, info.memory_budget_bytes or None)
    info.rebuild_suggested = (f"the collection has grown to {info.count} vectors: `cxrtool index --rebuild` "
                              f"would choose {preferred}" if preferred != info.kind or
                              (info.kind in ("ivf", "ivfpq") and info.count > 4 * max(info.trained_on, 1)) else "")
    store = RowStore(index_dir, info.parts)
    t = time.perf_counter()
    all_vecs = store.vectors(np.arange(len(store)))
    text_queries = tuning_text_queries(info.model_fingerprint, model) if info.kind != "flat" and target == "images" \
        else None
    _stage(progress, "measuring recall on held-out queries")
    _tune(index, store, all_vecs, info, text_queries)  # new vectors may sit off the trained lists: re-tune
    info.tune_seconds = round(time.perf_counter() - t, 3)
    info.index_bytes = _write_index(index, index_dir)
    info.build_seconds = round(time.perf_counter() - t0, 3)
    Workspace(index_dir.parent).write_json(index_dir / INFO_FILE, info.to_dict())
    return info


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


def index_is_current(ws: Workspace, target: str = "images") -> bool:
    shards, index_dir = ws.collection(target)
    info = read_info(index_dir)
    return bool(info) and (index_dir / INDEX_FILE).is_file() and info.shards == _shard_state(shards)


def load_index(workspace: str | Path | None = None, rebuild_if_stale: bool = True, target: str = "images",
               model=None, progress: bool = False):
    """(faiss index, IndexInfo, RowStore); brings the index up to date first if the shards moved on."""
    import faiss

    ws = Workspace.resolve(workspace)
    _, index_dir = ws.collection(target)
    if not index_is_current(ws, target):
        if not rebuild_if_stale:
            raise WorkspaceError(f"the index in {index_dir} is missing or stale", "run `cxrtool index`")
        build_index(ws.root, target=target, model=model, progress=progress)
    info = read_info(index_dir)
    index = faiss.read_index(str(index_dir / INDEX_FILE))
    return index, info, RowStore(index_dir, info.parts)

