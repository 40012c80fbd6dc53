"""Opening an index for queries: read it back, after bringing it up to date when its shards moved on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrtool.errors import WorkspaceError
from cxrtool.index.build import build_index
from cxrtool.index.info import INDEX_FILE, IndexInfo, index_is_current, read_info
from cxrtool.index.lazy_model import LazyModel
from cxrtool.index.store import RowStore
from cxrtool.workspace import Workspace

if TYPE_CHECKING:
    from cxrtool.model.dual import DualEncoder


def load_index(workspace: str | Path | None = None, rebuild_if_stale: bool = True, target: str = "images",
               model: LazyModel | DualEncoder | str | Path | None = None, progress: bool = False
               ) -> tuple[Any, IndexInfo, RowStore]:
    """(faiss index, IndexInfo, RowStore); brings the index up to date first if the shards moved on.
    ``model`` tunes the text-query depth of that rebuild; a :class:`LazyModel` keeps what it loads."""
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
