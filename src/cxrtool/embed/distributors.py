"""Distributors: where the work of an embed run happens, kept apart from the work itself.

Each has ``select(items)`` (which items this process does) and ``decoded(items, decode,
batch_size)`` (run the mapper's picklable ``decode`` over them, yielding batches in item order).
:class:`DecodeWorkers` decodes in a pool of loader processes (PyTorch's DataLoader: prefetching,
pinned memory on CUDA), or in the calling process with 0 workers, and :class:`Parts` splits one
archive across independent processes (SLURM array tasks, Kubernetes indexed jobs, torchrun ranks)
with no coordination: each item belongs to exactly one part by a hash of its path. Another engine
(a Ray cluster) is one more class with these two methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from cxrtool.embed.shards import image_id
from cxrtool.io.discover import ArchiveFile


class Distributor(Protocol):
    workers: int  # decode processes, for the run log

    def select(self, items: Sequence[ArchiveFile]) -> list[ArchiveFile]: ...

    def decoded(self, items: Sequence[ArchiveFile], decode: Callable[[ArchiveFile], Any],
                batch_size: int) -> Iterator[list[Any]]: ...


class _Decoding:
    """A map-style dataset over the items; runs in the loader workers."""

    def __init__(self, items: Sequence[ArchiveFile], decode: Callable[[ArchiveFile], Any]) -> None:
        self.items = items
        self.decode = decode

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.decode(self.items[i])


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


class DecodeWorkers:
    """Decode in ``workers`` loader processes (0: in the main process, through the same loader),
    four batches prefetched per worker; ``pin_memory`` for a CUDA model."""

    def __init__(self, workers: int, pin_memory: bool = False) -> None:
        self.workers = workers
        self.pin_memory = pin_memory

    def select(self, items: Sequence[ArchiveFile]) -> list[ArchiveFile]:
        return list(items)

    def decoded(self, items: Sequence[ArchiveFile], decode: Callable[[ArchiveFile], Any],
                batch_size: int) -> Iterator[list[Any]]:
        from torch.utils.data import DataLoader

        loader = DataLoader(_Decoding(items, decode), batch_size=batch_size, num_workers=self.workers,
                            collate_fn=_as_list, pin_memory=self.pin_memory,
                            prefetch_factor=4 if self.workers else None, persistent_workers=False)
        yield from loader


class Threads:
    """Fetch and decode in ``connections`` threads of this process, in item order, with at most
    ``batch_size x connections`` items in flight (memory stays bounded): for a DICOMweb source,
    where the wait is the network and the decode libraries release the GIL for the pixels."""

    def __init__(self, connections: int) -> None:
        self.workers = connections

    def select(self, items: Sequence[ArchiveFile]) -> list[ArchiveFile]:
        return list(items)

    def decoded(self, items: Sequence[ArchiveFile], decode: Callable[[ArchiveFile], Any],
                batch_size: int) -> Iterator[list[Any]]:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor
        from itertools import islice

        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="cxrtool-fetch")
        try:
            todo = iter(items)
            pending = deque(pool.submit(decode, f) for f in islice(todo, batch_size * self.workers))
            batch: list[Any] = []
            while pending:
                batch.append(pending.popleft().result())
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(decode, nxt))
                if len(batch) == batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:  # a failure (the server gone): drop what is queued, do not wait on it
            pool.shutdown(wait=False, cancel_futures=True)


class Parts:
    """Part ``index`` of ``total`` of the archive (by a hash of each path), decoded by ``inner``."""

    def __init__(self, index: int, total: int, inner: Distributor) -> None:
        self.index = index
        self.total = total
        self.inner = inner
        self.workers = inner.workers

    @property
    def name(self) -> str:
        """The part's own folder under the workspace's shards (its shards and errors.jsonl)."""
        return part_dir_name(self.index, self.total)

    def select(self, items: Sequence[ArchiveFile]) -> list[ArchiveFile]:
        return [f for f in self.inner.select(items) if image_id(f.rel) % self.total == self.index]

    def decoded(self, items: Sequence[ArchiveFile], decode: Callable[[ArchiveFile], Any],
                batch_size: int) -> Iterator[list[Any]]:
        return self.inner.decoded(items, decode, batch_size)


def part_dir_name(index: int, total: int) -> str:
    return f"part-{index:04d}-of-{total:04d}"
