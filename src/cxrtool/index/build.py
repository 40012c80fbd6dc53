"""Building the FAISS index of a workspace collection from its shards, or adding new shards to it.

Vectors are unit-norm, so inner product = cosine. The index stores the stable shard ids
(``IndexIDMap2`` or IVF ids), never positions. The kind comes from ``kinds.py``; IVF is trained on
a random sample, not the first vectors; the search depth is tuned (``tuning.py``) and recorded in
``index.json`` (``info.py``) with the build parameters and timings. PQ results are re-ranked
exactly from the stored vectors (``store.py``). New shards are added incrementally; vectors from
two different models are refused. Opening and searching are the query side (``open.py``,
``faiss_query.py``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cxrtool.embed.shards import BadShard, read_collection, scan_shards
from cxrtool.errors import WorkspaceError
from cxrtool.index.faiss_query import gpu_available, to_gpu
from cxrtool.index.info import (
    INDEX_FILE,
    IndexInfo,
    check_generation,
    current_generation,
    new_generation,
    publish,
    write_info,
)
from cxrtool.index.kinds import KINDS, PQ_RERANK, SQ_RERANK, choose_index_kind, default_memory_budget, factory_string
from cxrtool.index.lazy_model import LazyModel
from cxrtool.index.store import RowStore, part_names, write_part
from cxrtool.index.tuning import tune, tuning_text_queries
from cxrtool.locks import workspace_lock
from cxrtool.notes import note as _note
from cxrtool.workspace import Workspace

log = logging.getLogger(__name__)


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
    wait: bool = True,
) -> IndexInfo:
    """Build the index of a collection ("images" or "reports"), or bring it up to date.

    With an index already there, new shards are added to it (same kind, no retraining); a shard
    that changed or disappeared, another ``kind``, or ``rebuild=True`` builds from scratch, and so
    does a current generation that is torn (with a one-line note). Every build writes a new
    generation and then makes it current (``info.py``); only verified shards are read.
    ``device``: "auto" (a GPU when faiss has one), "cpu" or "cuda". ``model`` (a DualEncoder or
    model directory; default: the default model) embeds the prompt bank to tune the depth of text
    queries, if it is the model of the shards. Holds the collection's index lock (``wait=False``:
    refuse at once when another build holds it).
    """
    if kind not in KINDS:
        raise WorkspaceError(f"unknown index kind {kind!r}", f"use one of {', '.join(KINDS)}")
    if not 0 < recall_target <= 1:
        raise WorkspaceError(f"recall target {recall_target} is not in (0, 1]")
    ws = Workspace.resolve(workspace)
    if not ws.root.is_dir():
        raise WorkspaceError(f"no workspace at {ws.root}", "run `cxrtool embed ARCHIVE` first (or pass --workspace)")
    model = LazyModel.of(ws.model_of(model))  # loaded at most once: text-depth tuning, the text export
    with workspace_lock(ws.root, f"index-{target}", "cxrtool index", wait):
        info = _build_locked(ws, kind, target, rebuild, memory_budget, recall_target, opq, device, model, progress)
    if target == "images":
        _prepare_text_queries(model, info.model_fingerprint, progress)
    return info


def _prepare_text_queries(model: LazyModel, vector_id: str, progress: bool) -> None:
    """Export the model's text side for searches that run without torch (once per model and cache;
    :mod:`cxrtool.model.onnx_text`): search only reads, so the index readies what it will need."""
    from cxrtool.model.onnx_text import export_files, export_text

    card = model.peek()
    if card is None or card.vector_id != vector_id or not card.fingerprint:
        return  # not the shards' model, or not a local one: text searches load it as before
    graph, tokenizer, refused = export_files(card)
    if (graph.is_file() and tokenizer.is_file()) or refused.is_file():
        return
    _stage(progress, "preparing fast text queries (once per model)")
    try:
        loaded = model.get()
    except Exception as exc:  # noqa: BLE001 - the index is built; searches will say what is wrong with the model
        log.info("text export skipped: %s", exc)
        return
    if loaded.device.type == "cpu":
        export_text(loaded)


def _build_locked(ws: Workspace, kind: str, target: str, rebuild: bool, memory_budget: int | None,
                  recall_target: float, opq: bool, device: str, model, progress: bool) -> IndexInfo:
    shards, index_dir = ws.collection(target)
    recorded = (ws.read_json(ws.embed_info) or {}).get("model_fingerprint")
    scan = scan_shards(shards, recorded, kind="report" if target == "reports" else "image")
    if scan.bad:
        first = scan.bad[0]
        _note(f"{len(scan.bad)} shard(s) did not verify and are left out of the index ({first.path}: "
              f"{first.reason}); `cxrtool embed` moves them aside and embeds their files again")
    state = scan.state(shards)
    if not state:
        hint = "run `cxrtool embed ARCHIVE` first" if target == "images" else "run `cxrtool embed-reports SOURCE` first"
        raise WorkspaceError(f"no embeddings in {shards}", hint)
    current = current_generation(index_dir)
    old, why = check_generation(current) if current else (None, "")
    if why:
        _note(f"the current index is damaged ({why}): building it again from the shards")
    if old and not rebuild and kind in ("auto", old.kind):
        if old.shards == state:
            return old
        if all(state.get(name) == size for name, size in old.shards.items()):
            try:
                return _add_shards(index_dir, current, shards, old, state, target, model, progress)
            except _Unusable as exc:
                _note(f"the current index cannot be extended ({exc}): building it again from the shards")
    return _build(index_dir, shards, state, kind, memory_budget, recall_target, opq, device, target, model,
                  progress)


def _drop_unreadable(state: dict[str, int], shards: Path, skipped: list[BadShard]) -> None:
    """Shards whose data did not read (footer fine, a page not) are left out of what the index
    records, with a note, so the next build tries them again."""
    for bad in skipped:
        state.pop(bad.path.relative_to(shards).as_posix(), None)
        _note(f"{bad.path}: {bad.reason}; left out of the index (`cxrtool validate` checks every shard)")


class _Unusable(Exception):
    """The current generation's files do not open (torn in a way sizes did not show)."""


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


def _write_index(index, gen_dir: Path) -> int:
    import faiss

    path = gen_dir / INDEX_FILE
    try:
        faiss.write_index(index, str(path))
    except RuntimeError as exc:  # faiss reports OS errors as RuntimeError("... errno=28 No space left ...")
        match = re.search(r"errno[= ]+(\d+)", str(exc))
        if match:
            code = int(match.group(1))
            raise OSError(code, os.strerror(code), str(path)) from None
        raise
    return path.stat().st_size


def _tune_and_write(index, store: RowStore, vectors: np.ndarray, info: IndexInfo, index_dir: Path, target: str,
                    model, progress: bool, started: float, tune_started: float) -> None:
    """Tune the search depths (text queries too, for images), then write the index and its info."""
    text_queries = tuning_text_queries(info.model_fingerprint, model) if info.kind != "flat" and target == "images" \
        else None
    _stage(progress, "measuring recall on held-out queries")
    tune(index, store, vectors, info, text_queries)
    info.tune_seconds = round(time.perf_counter() - tune_started, 3)
    info.index_bytes = _write_index(index, index_dir)
    info.build_seconds = round(time.perf_counter() - started, 3)
    write_info(index_dir, info)


def _build(index_dir: Path, shards: Path, state: dict[str, int], kind: str, memory_budget: int | None,
           recall_target: float, opq: bool, device: str, target: str, model, progress: bool) -> IndexInfo:
    import faiss

    t0 = time.perf_counter()
    skipped: list[BadShard] = []
    rows, vecs, vector_id = read_collection(shards, sorted(state), progress=progress, unreadable=skipped)
    _drop_unreadable(state, shards, skipped)
    if not state:
        raise WorkspaceError(f"no readable embeddings in {shards}", "run `cxrtool embed` again")
    ids = rows.column("id").to_numpy()
    if len(np.unique(ids)) != len(ids):
        raise WorkspaceError(f"{shards}: the same id appears in two shards",
                             "check the workspace with `cxrtool validate`; re-embed with --overwrite")
    n, dim = vecs.shape
    budget = memory_budget or default_memory_budget()
    kind = choose_index_kind(n, dim, budget) if kind == "auto" else kind
    use_gpu = (device == "cuda" or (device == "auto" and gpu_available())) and kind in ("ivf", "ivfsq", "ivfpq")
    factory = factory_string(kind, n, dim, opq=opq, gpu=use_gpu)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if kind == "ivfsq":  # 8-bit codes of the vectors themselves: per-dimension ranges, no centroid term
        faiss.extract_index_ivf(index).by_residual = False
    _training_effort(index)
    info = IndexInfo(kind, factory, int(n), int(dim), vector_id, state, parts=[0], recall_target=recall_target,
                     memory_budget_bytes=int(budget), device="cuda" if use_gpu else "cpu",
                     rerank={"ivfpq": PQ_RERANK, "ivfsq": SQ_RERANK}.get(kind, 0),
                     built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    work = to_gpu(index) if use_gpu else index
    if work is None:
        work, info.device = index, "cpu"
    t = time.perf_counter()
    if not index.is_trained:  # a random sample, not the first vectors (biased by archive order)
        nlist = faiss.extract_index_ivf(index).nlist
        size = min(n, max(39 * nlist, 20_000), 256 * nlist)
        _stage(progress, f"training {factory} on {size} vectors")
        work.train(vecs[np.random.default_rng(0).choice(n, size=size, replace=False)])
        info.trained_on = int(size)
    info.train_seconds = round(time.perf_counter() - t, 3)
    if kind in ("flat", "hnsw"):
        work = faiss.IndexIDMap2(work)
    t = time.perf_counter()
    _stage(progress, f"adding {n} vectors")
    work.add_with_ids(vecs, ids)
    info.add_seconds = round(time.perf_counter() - t, 3)
    index = faiss.index_gpu_to_cpu(work) if info.device == "cuda" else work
    # a new generation beside the current one, made current when whole: a killed or failed build
    # leaves the old index as it was
    with _generation(index_dir) as gen:
        write_part(gen, 0, rows, vecs)
        del vecs  # tuning reads the part just written, memory-mapped: no second copy at 1M x 1,024 (4 GB)
        store = RowStore(gen, [0])
        _tune_and_write(index, store, store.matrix(), info, gen, target, model, progress, t0, time.perf_counter())
    return info


@contextmanager
def _generation(index_dir: Path) -> Iterator[Path]:
    """A new generation folder to write; published on success, removed on any failure."""
    gen = new_generation(index_dir)
    try:
        yield gen
    except BaseException:
        shutil.rmtree(gen, ignore_errors=True)
        raise
    publish(index_dir, gen)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Parts are immutable once written, so generations share them by hard link (a copy where the
    filesystem has none)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _add_shards(index_dir: Path, current: Path, shards: Path, info: IndexInfo, state: dict[str, int], target: str,
                model, progress: bool = False) -> IndexInfo:
    """Add the shards written since the last build, as a new generation that shares the current
    one's parts: no retraining, ids checked for clashes."""
    import faiss

    t0 = time.perf_counter()
    new = sorted(set(state) - set(info.shards))
    skipped: list[BadShard] = []
    rows, vecs, _ = read_collection(shards, new, vector_id=info.model_fingerprint, progress=progress,
                                    unreadable=skipped)
    _drop_unreadable(state, shards, skipped)
    try:
        store = RowStore(current, info.parts)
        index = faiss.read_index(str(current / INDEX_FILE))
    except (WorkspaceError, RuntimeError) as exc:
        raise _Unusable(str(exc).splitlines()[0]) from None
    ids = rows.column("id").to_numpy()
    clash = (store.positions(ids) >= 0).sum() + (len(ids) - len(np.unique(ids)))
    if clash:
        raise WorkspaceError(f"{clash} id(s) in the new shards are already indexed or repeated",
                             "check the workspace with `cxrtool validate`; rebuild with `cxrtool index --rebuild`")
    t = time.perf_counter()
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vecs), ids)
    part = max(info.parts) + 1
    with _generation(index_dir) as gen:
        for number in info.parts:
            for name in part_names(number):
                _link_or_copy(current / name, gen / name)
        write_part(gen, part, rows, vecs)
        _extend_info(info, part, len(ids), state)
        info.add_seconds = round(time.perf_counter() - t, 3)
        store = RowStore(gen, info.parts)
        t = time.perf_counter()
        # new vectors may sit off the trained lists: re-tune
        _tune_and_write(index, store, store.matrix(), info, gen, target, model, progress, t0, t)
    return info


def _extend_info(info: IndexInfo, part: int, added: int, state: dict[str, int]) -> None:
    info.parts = [*info.parts, part]
    info.count += int(added)
    info.shards = state
    info.incremental_adds += 1
    preferred = choose_index_kind(info.count, info.dim, info.memory_budget_bytes or None)
    info.rebuild_suggested = (f"the collection has grown to {info.count} vectors: `cxrtool index --rebuild` "
                              f"would choose {preferred}" if preferred != info.kind or
                              (info.kind in ("ivf", "ivfpq") and info.count > 4 * max(info.trained_on, 1)) else "")


