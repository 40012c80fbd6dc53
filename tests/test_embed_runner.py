"""The embed runner's seams: a second reader and a second distributor plug in through their
interfaces alone, with the runner unchanged, and give the same shards as the built-in ones."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cxrtool.embed.distributors import DecodeWorkers, Parts
from cxrtool.embed.mapper import ImageDecoder, ImageMapper
from cxrtool.embed.readers import ArchiveReader, FileListReader
from cxrtool.embed.runner import Runner
from cxrtool.embed.writer import ShardWriter
from cxrtool.io.classify import HeaderFilter
from cxrtool.io.discover import ArchiveFile

from .conftest import ARCHIVE


class PlainListReader:
    """A reader the project does not ship: a hand-made list of work items."""

    def __init__(self, paths: list[Path], root: Path) -> None:
        self.paths, self.root = paths, root

    def items(self) -> list[ArchiveFile]:
        return [ArchiveFile(p, p.relative_to(self.root).as_posix(), "raster") for p in self.paths]


class ThreadsDistributor:
    """A distributor the project does not ship: decode on a thread pool, batches in item order."""

    workers = 2

    def __init__(self) -> None:
        self.calls = 0

    def select(self, items):
        return list(items)

    def decoded(self, items, decode, batch_size):
        self.calls += 1
        with ThreadPoolExecutor(self.workers) as pool:
            for start in range(0, len(items), batch_size):
                yield list(pool.map(decode, items[start : start + batch_size]))


def _run(reader, distributor, model, out: Path, done=frozenset(), batch_size: int = 3):
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, model.card.vector_id, shard_rows=4, errors_path=out / "errors.jsonl")
    mapper = ImageMapper(model, ImageDecoder(model.card.image, HeaderFilter()))
    stats = Runner(reader, mapper, writer, distributor, batch_size, set(done)).run(progress=False)
    return stats, writer


def _vectors(out: Path) -> dict[str, bytes]:
    got = {}
    for shard in sorted(out.glob("shard-*.parquet")):
        table = pq.read_table(shard)
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        for path, vec in zip(table.column("path").to_pylist(), flat.reshape(len(table), -1), strict=True):
            got[path] = np.ascontiguousarray(vec).tobytes()
    return got


@pytest.fixture(scope="module")
def jpegs() -> list[Path]:
    return sorted((ARCHIVE / "nih").rglob("*.jpg"))[:7]


def test_a_second_reader_and_distributor_plug_in_unchanged(jpegs, tiny_model, tmp_path):
    threads = ThreadsDistributor()
    stats, writer = _run(PlainListReader(jpegs, ARCHIVE), threads, tiny_model, tmp_path / "plugged")
    assert threads.calls == 1 and stats.found == 7 and writer.written == 7 and writer.shards_written == 2
    assert stats.read_seconds > 0 and stats.map_seconds > 0 and stats.write_seconds > 0
    # the same files through the shipped reader and distributor: the same rows, bit for bit
    _run(FileListReader(jpegs, ARCHIVE), DecodeWorkers(0), tiny_model, tmp_path / "shipped")
    plugged, shipped = _vectors(tmp_path / "plugged"), _vectors(tmp_path / "shipped")
    assert sorted(plugged) == sorted(p.relative_to(ARCHIVE).as_posix() for p in jpegs)
    assert plugged == shipped


def test_the_runner_skips_done_items_and_lists_problems(jpegs, tiny_model, tmp_path):
    missing = ARCHIVE / "nih" / "no-such-file.png"
    done = {jpegs[0].relative_to(ARCHIVE).as_posix()}
    stats, writer = _run(FileListReader([*jpegs, missing], ARCHIVE), DecodeWorkers(0), tiny_model, tmp_path / "o", done)
    assert stats.found == 8 and stats.already_done == 1 and writer.written == 6 and writer.failed == 1
    rows = (tmp_path / "o" / "errors.jsonl").read_text()
    assert "no-such-file.png" in rows and '"stage": "discover"' in rows


def test_parts_split_the_items_between_processes_without_overlap(tiny_model):
    items = ArchiveReader(ARCHIVE).items()
    parts = [Parts(i, 3, DecodeWorkers(0)).select(items) for i in range(3)]
    names = [f.rel for part in parts for f in part]
    assert sorted(names) == sorted(f.rel for f in items) and len(set(names)) == len(names)
    assert all(parts) and Parts(1, 3, DecodeWorkers(0)).name == "part-0001-of-0003"


def test_an_interrupted_run_writes_no_partial_shard_and_keeps_its_failure_rows(jpegs, tiny_model, tmp_path):
    class Interrupted(DecodeWorkers):
        def decoded(self, items, decode, batch_size):
            yield from list(super().decoded(items, decode, batch_size))[:1]
            raise KeyboardInterrupt  # Ctrl-C after one batch: 3 rows buffered, a shard needs 4

    missing = ARCHIVE / "nih" / "no-such-file.png"
    with pytest.raises(KeyboardInterrupt):
        _run(FileListReader([missing, *jpegs], ARCHIVE), Interrupted(0), tiny_model, tmp_path / "o")
    assert not list((tmp_path / "o").glob("shard-*.parquet"))  # the buffered rows are redone on resume
    assert "no-such-file.png" in (tmp_path / "o" / "errors.jsonl").read_text()
