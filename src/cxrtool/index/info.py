"""What an index folder records (``index.json``), its generations, and whether it still matches
its shards: shared by the build side (writes generations) and the query side (reads them).

An index folder holds *generations*, each a complete, immutable index::

    <index folder>/CURRENT          the name of the generation to search ("gen-000007"), swapped by rename
    <index folder>/gen-000007/      index.faiss, index.json, rows-NNNNN.parquet, vectors-NNNNN.npy
    <index folder>/gen-000006/      the one before (kept: a good generation survives a torn write)

A writer builds a new generation beside the others and then swaps ``CURRENT``; a reader reads
``CURRENT`` once and opens that generation, so a search during a build answers from the old index
or the new one, never a mix. ``index.json`` lists each file's size, so a torn file is found when the
generation is opened, and readers fall back to the newest generation that is whole. Index folders
written before generations (files directly in the folder) are read as one generation.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cxrtool.embed.shards import shard_state
from cxrtool.workspace import Workspace

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"
CURRENT = "CURRENT"
GENERATIONS_KEPT = 3  # the current one and two before it


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
    # of the shards is at hand, else 8x the image depth (what they needed at 1M x 1,024)
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
    files: dict[str, int] = field(default_factory=dict)  # file -> size in bytes, to find a torn one
    generation: str = ""  # the generation folder's name (filled in when read)

    def to_dict(self) -> dict:
        return asdict(self)


def read_info(gen_dir: Path) -> IndexInfo | None:
    """A generation's info, or None when missing, torn or written by an older cxrtool (then: rebuild)."""
    path = gen_dir / INFO_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    known = {f.name for f in fields(IndexInfo)}
    if not isinstance(data, dict) or not {"kind", "parts"} <= set(data) or not set(data) <= known:
        return None
    info = IndexInfo(**data)
    info.generation = gen_dir.name
    return info


def write_info(gen_dir: Path, info: IndexInfo) -> None:
    """index.json, last: it lists every other file of the generation with its size."""
    info.files = {p.name: p.stat().st_size for p in sorted(gen_dir.iterdir())
                  if p.is_file() and p.name != INFO_FILE and not p.name.startswith(".")}
    Workspace(gen_dir.parent).write_json(gen_dir / INFO_FILE, {**info.to_dict(), "generation": ""})


def check_generation(gen_dir: Path) -> tuple[IndexInfo | None, str]:
    """(its info, "") when a generation is whole, else (None, why not): index.json reads, and every
    file it lists is there with the size it had when written."""
    info = read_info(gen_dir)
    if info is None:
        return None, f"{gen_dir / INFO_FILE} is missing, unreadable or from an older cxrtool"
    expected = info.files or {INDEX_FILE: -1}
    for name, size in expected.items():
        path = gen_dir / name
        if not path.is_file():
            return None, f"{path} is missing"
        if size >= 0 and path.stat().st_size != size:
            return None, f"{path} is {path.stat().st_size} bytes, it was written with {size}"
    return info, ""


def generations(index_dir: Path) -> list[Path]:
    """The index's generations, the one ``CURRENT`` names first, then the others newest first
    (a folder of the layout before generations counts as one)."""
    gens = sorted((p for p in index_dir.glob("gen-*") if p.is_dir() and "." not in p.name), reverse=True)
    if (index_dir / INFO_FILE).is_file():
        gens.append(index_dir)  # written before generations existed
    try:
        current = index_dir / (index_dir / CURRENT).read_text().strip()
    except OSError:
        return gens
    return [current, *(g for g in gens if g != current)] if current.is_dir() else gens


def current_generation(index_dir: Path) -> Path | None:
    gens = generations(index_dir)
    return gens[0] if gens else None


def new_generation(index_dir: Path) -> Path:
    """A fresh ``gen-NNNNNN.building`` folder numbered after every generation there (stale
    half-built ones, left by a killed build, are removed first: the caller holds the index lock)."""
    index_dir.mkdir(parents=True, exist_ok=True)
    for stale in index_dir.glob("gen-*.building"):
        shutil.rmtree(stale, ignore_errors=True)
    numbers = [int(p.name[4:]) for p in index_dir.glob("gen-*") if p.name[4:].isdigit()]
    gen = index_dir / f"gen-{max(numbers, default=0) + 1:06d}.building"
    gen.mkdir()
    return gen


def publish(index_dir: Path, building: Path) -> Path:
    """Make a finished generation the current one (an atomic rename of ``CURRENT``), then drop
    generations beyond :data:`GENERATIONS_KEPT` and the files of the layout before generations."""
    gen = building.with_name(building.name.removesuffix(".building"))
    building.rename(gen)
    tmp = index_dir / f".{CURRENT}.tmp"
    with open(tmp, "w") as fh:
        fh.write(gen.name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, index_dir / CURRENT)
    kept = [g for g in generations(index_dir) if g != index_dir][:GENERATIONS_KEPT]
    for old in index_dir.glob("gen-*"):
        if old.is_dir() and old not in kept:
            shutil.rmtree(old, ignore_errors=True)
    for name in (INDEX_FILE, INFO_FILE, "rows-*.parquet", "vectors-*.npy"):
        for legacy in index_dir.glob(name):
            legacy.unlink(missing_ok=True)
    return gen


def index_is_current(ws: Workspace, target: str = "images") -> bool:
    """True when the current generation of ``target``'s index is whole and holds exactly the
    verified shards there now."""
    shards, index_dir = ws.collection(target)
    gen = current_generation(index_dir)
    info = check_generation(gen)[0] if gen else None
    kind = "report" if target == "reports" else "image"
    return info is not None and info.shards == shard_state(shards, info.model_fingerprint, kind)
