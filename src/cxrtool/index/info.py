"""What an index folder records (``index.json``) and whether it still matches its shards: shared by
the build side (writes it) and the query side (reads it, rebuilds when stale)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cxrtool.embed.shards import shard_state
from cxrtool.workspace import Workspace

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"


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


def index_is_current(ws: Workspace, target: str = "images") -> bool:
    """True when the index of ``target`` exists and holds exactly the shards there now."""
    shards, index_dir = ws.collection(target)
    info = read_info(index_dir)
    return bool(info) and (index_dir / INDEX_FILE).is_file() and info.shards == shard_state(shards)
