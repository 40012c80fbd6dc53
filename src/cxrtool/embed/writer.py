"""The one shard writer: rows + vectors -> whole Parquet shards, failures -> errors.jsonl.

Resume rule (img2dataset's): a shard is written atomically and only when complete, and what is
done is read back from the shards themselves (plus errors.jsonl), so a killed run restarts where
the last complete shard ended, with no duplicates and no gaps. `embed` and `embed-reports` both
write through :class:`ShardWriter`.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

from cxrtool.constants import SHARD_ROWS
from cxrtool.embed.errors_log import error_line
from cxrtool.embed.shards import next_shard_path, write_shard

MAX_FAILURES_KEPT = 100


class ShardWriter:
    """Buffers rows and writes a shard each time ``shard_rows`` are reached (and on leaving ``with``).

    ``errors_path``: where :meth:`fail` appends rows (None: this collection records no failures);
    it is flushed with each shard, so a shard on disk never lacks the failures that preceded it.
    Counts for the run summary are kept here."""

    def __init__(self, directory: Path, vector_id: str, dtype: str = "float32", shard_rows: int = SHARD_ROWS,
                 kind: str = "image", errors_path: Path | None = None) -> None:
        self.directory = directory
        self.vector_id = vector_id
        self.dtype = dtype
        self.shard_rows = shard_rows
        self.kind = kind
        self.rows: list[dict] = []
        self.vectors: list[np.ndarray] = []
        self.errors = open(errors_path, "a") if errors_path else None  # noqa: SIM115 - closed on exit
        self.written = 0
        self.shards_written = 0
        self.write_seconds = 0.0
        self.failed = 0
        self.not_images = 0
        self.skipped: dict[str, int] = {}  # reason -> count (filters, duplicates)
        self.failures: list[dict] = []  # the first MAX_FAILURES_KEPT errors; all are in errors.jsonl
        self.study_rules: Counter[str] = Counter()  # which rule gave each written row its study (io/layouts.py)
        self.body_parts: Counter[str] = Counter()  # BodyPartExamined of the written rows ("" when absent)

    def write(self, rows: list[dict], vectors: np.ndarray) -> None:
        self.study_rules.update(r["study_rule"] for r in rows if r.get("study_rule"))
        self.body_parts.update(r.get("body_part") or "" for r in rows)
        self.rows.extend(rows)
        self.vectors.append(vectors)
        self.written += len(rows)
        if len(self.rows) >= self.shard_rows:
            self.flush()

    def fail(self, path: str, kind: str, stage: str, reason: str) -> None:
        """One errors.jsonl row; kind "error" | "not_image" | "skipped" (see embed/errors_log.py)."""
        if self.errors is None:
            raise ValueError("this writer records no failures")
        self.errors.write(error_line(path, kind, stage, reason))
        if kind == "not_image":
            self.not_images += 1
        elif kind == "skipped":
            key = reason.split(" (same instance")[0]
            self.skipped[key] = self.skipped.get(key, 0) + 1
        else:
            self.failed += 1
            if len(self.failures) < MAX_FAILURES_KEPT:
                self.failures.append({"path": path, "stage": stage, "reason": reason})

    def flush(self) -> None:
        if not self.rows:
            return
        t = time.perf_counter()
        write_shard(next_shard_path(self.directory), self.rows, np.concatenate(self.vectors), self.vector_id,
                    self.dtype, kind=self.kind)
        if self.errors is not None:
            self.errors.flush()
        self.write_seconds += time.perf_counter() - t
        self.shards_written += 1
        self.rows, self.vectors = [], []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """Write what is buffered, then close the errors file; after an exception (a kill, Ctrl-C)
        the buffered rows are dropped instead: no shard is ever partial, and resume redoes them."""
        try:
            if exc_type is None:
                self.flush()
        finally:
            if self.errors is not None:
                self.errors.close()
                self.errors = None
