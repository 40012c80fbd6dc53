"""A small, safe on-disk cache of text vectors, so a repeated query skips the text tower.

A search for "left pleural effusion" encodes the prompt bank's sentences for it and their
other-side twins; the next search for it, or for "right pleural effusion", needs the same
sentences again. :class:`CachedText` answers those from ``$CXRTOOL_CACHE/queries/<tag>.npz`` and
starts the text tower (ONNX Runtime or torch, via the ``load`` it is given) only for texts it has
not seen.

Safe and small:
- keys are keyed hashes (HMAC-SHA256 with this installation's secret) of the text: no query text is
  stored, and a key cannot be tested against a dictionary of likely queries without the secret;
- one file per model vector tag, so a changed model never reads another's vectors; read with
  ``allow_pickle=False`` (nothing in it can run code); a torn, foreign or mis-shaped file is ignored
  and replaced; written atomically (temp file + rename), so concurrent searches never read half a
  file (the last writer wins: a lost entry is only encoded again);
- at most :data:`MAX_ENTRIES` vectors (4 MB at 1,024 dimensions), the least recently used dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cxrtool.model.onnx_export import cache_root, file_tag
from cxrtool.model.text_side import TextSide

log = logging.getLogger(__name__)

MAX_ENTRIES = 1000


def cache_file(vector_tag: str) -> Path:
    return cache_root() / "queries" / f"text-{file_tag(vector_tag)}.npz"


class CachedText(TextSide):
    """``load()``'s text side (made on the first miss), behind the on-disk cache of ``card``'s model."""

    def __init__(self, card, load: Callable[[], TextSide], max_entries: int = MAX_ENTRIES) -> None:
        self.card, self._load, self._inner = card, load, None
        self.path, self.max_entries = cache_file(card.vector_tag), max_entries
        self._secret: bytes | None = None
        self.keys, self.vectors = self._read()
        self.hits = self.misses = 0

    @property
    def inner(self) -> TextSide:
        """The text side that encodes what the cache lacks (loaded on first need)."""
        if self._inner is None:
            self._inner = self._load()
        return self._inner

    def _key(self, text: str) -> str:
        if self._secret is None:
            from cxrtool.privacy import installation_key

            self._secret = installation_key().encode()
        return hmac.new(self._secret, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def _read(self) -> tuple[list[str], np.ndarray]:
        empty = ([], np.zeros((0, self.card.embed_dim), np.float32))
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["vectors"]
        except FileNotFoundError:
            return empty
        except Exception as exc:  # noqa: BLE001 - torn or foreign: ignored, replaced on the next write
            log.info("query cache %s unreadable (%s); starting afresh", self.path, exc)
            return empty
        if (keys.ndim != 1 or vectors.shape != (len(keys), self.card.embed_dim) or vectors.dtype != np.float32
                or keys.dtype.kind != "U" or not np.isfinite(vectors).all()):
            return empty
        return keys.tolist(), vectors

    def _encode_texts(self, texts: list[str], batch_size: int) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        where = {k: i for i, k in enumerate(self.keys)}
        missing = list({k: t for k, t in zip(keys, texts, strict=True) if k not in where}.items())
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            new = self.inner._encode_texts([t for _, t in missing], batch_size)
            self.keys = self.keys + [k for k, _ in missing]
            self.vectors = np.concatenate([self.vectors, new.astype(np.float32)])
            where = {k: i for i, k in enumerate(self.keys)}
        out = self.vectors[[where[k] for k in keys]] if keys else np.zeros((0, self.card.embed_dim), np.float32)
        self._touch(keys, write=bool(missing))
        return out

    def _touch(self, used: list[str], write: bool) -> None:
        """Move ``used`` to the recent end, drop the oldest beyond the cap, and save if anything was added."""
        if not write:
            return
        used_set = set(used)
        order = [i for i, k in enumerate(self.keys) if k not in used_set] + \
            [i for i, k in enumerate(self.keys) if k in used_set]
        order = order[-self.max_entries:]
        self.keys, self.vectors = [self.keys[i] for i in order], self.vectors[order]
        self._write()

    def _write(self) -> None:
        with contextlib.suppress(OSError):  # a read-only or full cache folder: the search goes on uncached
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=".queries-", suffix=".npz", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.savez(fh, keys=np.array(self.keys, dtype="U64"), vectors=self.vectors)
                os.replace(tmp, self.path)
            finally:
                Path(tmp).unlink(missing_ok=True)
