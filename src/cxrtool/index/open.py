"""Opening an index for queries: the newest whole generation, read-only.

Search and serve are readers: they never build. They open the generation ``CURRENT`` names; if
that one is torn they answer from the newest older generation that is whole, with a one-line
note, and if none is whole they say what to run. An index behind its shards (new shards embedded
since) answers for what it holds, with a note. Only ``cxrtool index`` and ``cxrtool embed`` write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrtool.errors import WorkspaceError
from cxrtool.index.info import INDEX_FILE, IndexInfo, check_generation, generations
from cxrtool.index.store import RowStore
from cxrtool.notes import note as _note
from cxrtool.workspace import Workspace


def read_index_mapped(path: Path):
    """The FAISS index at ``path`` with its inverted lists memory-mapped read-only where FAISS can
    (IVF kinds; flat and HNSW are read as usual), else read into memory. Measured at 1M x 1,024:
    IVF-Flat (4.1 GB) opened in 0.05 s instead of 6.3 s with 35 MB of private memory instead of
    3.9 GB, the lists paged in (and shared) as queries scan them. But a mapped list scans slower,
    even once in the page cache (IVF-SQ8, nprobe 32, one thread: p50 3.89 vs 1.51 ms; text at
    nprobe 256: 12.7 vs 8.0 ms): worth it for a process that answers one query and exits, not for
    one that keeps the index open."""
    import faiss

    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except (RuntimeError, AttributeError):  # a FAISS build without mmap support: a normal read
        return faiss.read_index(str(path))


def _open(gen: Path, mapped: bool = False) -> tuple[Any, IndexInfo, RowStore]:
    import faiss

    info, why = check_generation(gen)
    if info is None:
        raise WorkspaceError(why)
    try:
        index = read_index_mapped(gen / INDEX_FILE) if mapped else faiss.read_index(str(gen / INDEX_FILE))
    except RuntimeError as exc:
        raise WorkspaceError(f"{gen / INDEX_FILE} does not read ({str(exc).splitlines()[0][:120]})") from None
    return index, info, RowStore(gen, info.parts)


def load_index(workspace: str | Path | None = None, target: str = "images", stale_note: bool = True,
               mapped: bool = False) -> tuple[Any, IndexInfo, RowStore]:
    """(faiss index, IndexInfo, RowStore) of the newest whole generation of ``target``'s index.
    ``mapped``: memory-map the inverted lists instead of reading them (:func:`read_index_mapped`:
    for a process that opens, answers one query and exits)."""
    ws = Workspace.resolve(workspace)
    shards, index_dir = ws.collection(target)
    run = "`cxrtool index`" + (" --target reports" if target == "reports" else "")
    gens = generations(index_dir)
    if not gens:
        from cxrtool.embed.shards import shard_paths

        if not shard_paths(shards):
            embed = "`cxrtool embed ARCHIVE`" if target == "images" else "`cxrtool embed-reports SOURCE`"
            raise WorkspaceError(f"no embeddings in {shards}", f"run {embed} first, then {run}")
        raise WorkspaceError(f"no index in {index_dir}", f"run {run} (search and serve only read the index)")
    first_problem = ""
    for gen in gens:
        try:
            opened = _open(gen, mapped)
        except WorkspaceError as exc:
            first_problem = first_problem or exc.reason
            continue
        if gen != gens[0]:
            _note(f"the current index is damaged ({first_problem}); answering from the previous one "
                  f"({opened[1].count} vectors, built {opened[1].built_at}); run {run} to rebuild it")
        if stale_note:
            _stale_note(shards, opened[1], target, run)
        return opened
    raise WorkspaceError(f"no whole index in {index_dir} ({first_problem})", f"run {run} to rebuild it from the shards")


def _stale_note(shards: Path, info: IndexInfo, target: str, run: str) -> None:
    """A note when shards were added or changed since the build: file sizes first (a stat each), and
    only if those differ the verified state (footers), so a search stays cheap."""
    from cxrtool.embed.shards import shard_paths, shard_state

    sizes = {p.relative_to(shards).as_posix(): p.stat().st_size for p in shard_paths(shards)}
    if sizes == info.shards:
        return
    now = shard_state(shards, info.model_fingerprint, "report" if target == "reports" else "image")
    if now != info.shards:
        new = len(set(now) - set(info.shards))
        what = f"{new} shard(s) embedded since it was built are not searched" if new else "its shards changed"
        _note(f"the index is behind the shards ({what}); run {run} to bring it up to date")
