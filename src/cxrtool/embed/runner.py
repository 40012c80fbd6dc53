"""The runner: read -> map -> write, timing each stage (the shape of clip-retrieval's runner).

It knows nothing of archives, models or Parquet: a reader lists work items, the distributor picks
this process's share and runs the mapper's ``decode`` where it should, the mapper screens and
encodes, the writer stores rows and failures; ``done`` (read back from earlier runs' output) is skipped. Any object with
the methods below plugs in (see ``tests/test_embed_runner.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from cxrtool.embed.distributors import Distributor


class Reader(Protocol):
    def items(self) -> Sequence[Any]: ...  # work items with .rel (their key) and .problem


class Mapper(Protocol):
    decode: Callable[[Any], tuple]  # item -> (payload, row, None | (kind, stage, reason)); picklable

    def screen(self, batch: list[tuple]) -> tuple[list[tuple], list[tuple]]: ...

    def encode(self, good: list[tuple]) -> np.ndarray: ...


class Writer(Protocol):
    """Used as a context manager: leaving it normally writes what is buffered, an exception drops it."""

    def write(self, rows: list[dict], vectors: np.ndarray) -> None: ...

    def fail(self, path: str, kind: str, stage: str, reason: str) -> None: ...

    def __enter__(self) -> Writer: ...

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None: ...


@dataclass
class RunStats:
    found: int = 0  # this process's items (its part, if any)
    already_done: int = 0
    done: int = 0  # items that went through (written or failed)
    list_seconds: float = 0.0  # the reader listing its items (walking an archive, querying a PACS)
    read_seconds: float = 0.0  # waiting for decoded batches (read, hash, header, decode)
    map_seconds: float = 0.0  # the model
    write_seconds: float = 0.0
    keys: set[str] = field(default_factory=set)  # the keys (.rel) of this process's items
    other: int = 0  # items that are rows only, not candidate images (kind "other": not images, hidden, links)


class Runner:
    """Works through ``reader``'s items that are not in ``done`` (the resume set)."""

    def __init__(self, reader: Reader, mapper: Mapper, writer: Writer, distributor: Distributor,
                 batch_size: int, done: set[str] | frozenset[str] = frozenset()) -> None:
        self.reader = reader
        self.mapper = mapper
        self.writer = writer
        self.distributor = distributor
        self.batch_size = batch_size
        self.done = done

    def run(self, progress: bool = True) -> RunStats:
        from tqdm import tqdm

        stats = RunStats()
        t = time.perf_counter()
        items = self.distributor.select(self.reader.items())
        stats.list_seconds = time.perf_counter() - t
        stats.found = len(items)
        stats.keys = {f.rel for f in items}
        stats.other = sum(1 for f in items if getattr(f, "kind", "") == "other")
        todo = [f for f in items if f.rel not in self.done]
        stats.already_done = stats.found - len(todo)
        problems = [f for f in todo if f.problem]  # found unusable by the reader: failures, no decode
        todo = [f for f in todo if not f.problem]
        bar = tqdm(total=len(todo), desc="embedding", unit="img", disable=not progress or not todo)
        # An engine that encodes (Ray: an actor pool) hands back vectors; the runner then only writes.
        # Engines with at-least-once retries may hand back an item twice: the first result is kept.
        encodes = getattr(self.distributor, "encodes", False)
        seen: set[str] = set()
        try:
            with self.writer:
                for f in problems:
                    self.writer.fail(f.rel, getattr(f, "problem_kind", "error"), "discover", f.problem or "")
                stats.done += len(problems)
                t_wait = time.perf_counter()
                for batch in self.distributor.decoded(todo, self.mapper.decode, self.batch_size):
                    stats.read_seconds += time.perf_counter() - t_wait
                    batch = _first_results(batch, seen)
                    good, failed = self.mapper.screen(batch)
                    for _, rec, err in failed:
                        self.writer.fail(rec["path"], *err)
                    if good:
                        t = time.perf_counter()
                        vectors = np.stack([x for x, _, _ in good]) if encodes else self.mapper.encode(good)
                        stats.map_seconds += time.perf_counter() - t
                        t = time.perf_counter()
                        self.writer.write([rec for _, rec, _ in good], vectors)
                        stats.write_seconds += time.perf_counter() - t
                    stats.done += len(batch)
                    bar.update(len(batch))
                    t_wait = time.perf_counter()
                t_close = time.perf_counter()  # leaving the block writes the last shard
            stats.write_seconds += time.perf_counter() - t_close
        finally:
            bar.close()
        return stats


def _first_results(batch: list[tuple], seen: set[str]) -> list[tuple]:
    """The batch without items already handed back in this run (a retried block's repeats)."""
    out = []
    for x in batch:
        path = x[1].get("path")
        if path not in seen:
            seen.add(path)
            out.append(x)
    return out
