"""What an index folder holds besides the FAISS file: the rows and the exact vectors.

Search must answer "which image is this id?" in microseconds and re-rank approximate (PQ) results
with exact similarities, without re-reading every shard per query (clip-retrieval's metadata
step took 42 ms of its 50). So `cxrtool index` copies, per build or incremental add, one *part*:

    rows-NNNNN.parquet     the shard metadata columns (no vectors), in index order
    vectors-NNNNN.npy      the float32 vectors in the same order (memory-mapped at search time)

FAISS stores the stable shard ids (never positions); an id is turned into a row through a sorted
id array (``np.searchsorted``), so results are checked against the row's own id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cxrtool.errors import WorkspaceError


def part_names(number: int) -> tuple[str, str]:
    return f"rows-{number:05d}.parquet", f"vectors-{number:05d}.npy"


def write_part(index_dir: Path, number: int, rows: pa.Table, vectors: np.ndarray) -> None:
    """Write one part (temp files + rename); the info file lists it only after this returns."""
    rows_name, vec_name = part_names(number)
    tmp_rows, tmp_vecs = index_dir / f".{rows_name}.tmp", index_dir / f".{vec_name}.tmp"
    pq.write_table(rows, tmp_rows)
    with open(tmp_vecs, "wb") as fh:
        np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32))
    tmp_rows.replace(index_dir / rows_name)
    tmp_vecs.replace(index_dir / vec_name)


def numpy_column(column: pa.ChunkedArray) -> np.ndarray:
    """A column as numpy, without pyarrow's ``to_numpy``: that imports pandas (~0.4 s, a third of a
    cold search). Numbers without nulls are viewed in place; anything else becomes an object array."""
    numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
    if numeric and column.null_count == 0:
        dtype = np.dtype(column.type.to_pandas_dtype())
        parts = [np.frombuffer(a.buffers()[1], dtype=dtype, count=len(a), offset=a.offset * dtype.itemsize)
                 for a in column.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype)
    out = np.empty(len(column), dtype=object)
    out[:] = column.to_pylist()
    return out


class RowStore:
    """The rows and vectors of an index, addressed by position (0..n-1) or by stable id."""

    def __init__(self, index_dir: Path, parts: Sequence[int]) -> None:
        tables, self._vectors = [], []
        for number in parts:
            rows_name, vec_name = part_names(number)
            try:
                # (ParquetFile, not read_table: that imports pyarrow.dataset and pandas, ~0.5 s of a cold search)
                with pq.ParquetFile(index_dir / rows_name) as rows:
                    tables.append(rows.read())
                self._vectors.append(np.load(index_dir / vec_name, mmap_mode="r"))
            except (FileNotFoundError, OSError) as exc:
                raise WorkspaceError(f"index part {number} in {index_dir} is missing or unreadable ({exc})",
                                     "rebuild it with `cxrtool index --rebuild`") from None
        self.table = pa.concat_tables(tables).combine_chunks() if tables else pa.table({"id": pa.array([], pa.int64())})
        self.ids = numpy_column(self.table.column("id"))
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted_ids = self.ids[self._order]
        self._offsets = np.cumsum([0] + [len(v) for v in self._vectors])
        self._columns_cache: dict[str, np.ndarray] = {}
        self.root = index_dir
        self._derived: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self._vectors[0].shape[1]) if self._vectors else 0

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions of stable ids; -1 for an id not in the store."""
        ids = np.asarray(ids, dtype=np.int64)
        where = np.searchsorted(self._sorted_ids, ids)
        where = np.minimum(where, max(len(self._sorted_ids) - 1, 0))
        found = (len(self._sorted_ids) > 0) & (self._sorted_ids[where] == ids) if len(ids) else np.zeros(0, bool)
        return np.where(found, self._order[where], -1)

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """Exact float32 vectors at ``positions`` (memory-mapped reads)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(self._vectors) == 1:
            return np.asarray(self._vectors[0][positions])
        part = np.searchsorted(self._offsets, positions, side="right") - 1
        out = np.empty((len(positions), self.dim), np.float32)
        for p in np.unique(part):
            sel = part == p
            out[sel] = self._vectors[p][positions[sel] - self._offsets[p]]
        return out

    def matrix(self) -> np.ndarray:
        """All vectors in index order: the memory-mapped part itself when there is one part (no
        copy), else the parts joined in memory."""
        if len(self._vectors) == 1:
            return self._vectors[0]
        if not self._vectors:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(self._vectors)

    def column(self, name: str) -> np.ndarray:
        """A metadata column as a numpy object/number array (cached: filters reuse it)."""
        if name not in self._columns_cache:
            self._columns_cache[name] = numpy_column(self.table.column(name))
        return self._columns_cache[name]

    def derived(self, name: str, make: Callable[[], Any]) -> Any:
        """A value derived from this generation (the IVF list of every row, for filter plans),
        made once on first use and kept with the rows it describes."""
        if name not in self._derived:
            self._derived[name] = make()
        return self._derived[name]

    def rows(self, positions: np.ndarray) -> list[dict]:
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        # (built from its buffer: pa.array() would import pandas, ~0.3 s of a cold search)
        indices = pa.Array.from_buffers(pa.int64(), len(positions), [None, pa.py_buffer(positions)])
        return self.table.take(indices).to_pylist()
