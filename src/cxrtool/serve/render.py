"""Archive images -> small JPEG/PNG files for the page, decoded by ``io/decode.py`` (the same
windowing as embedding: modality LUT, VOI LUT/window, MONOCHROME1) and cached, because decoding a
2,000-pixel DICOM takes tens of milliseconds and a results grid asks for twenty at once.

Two cache levels: an in-memory LRU bounded in bytes, and optionally files under
``<workspace>/serve-cache/`` that survive restarts. A cache key holds the image id, its content
hash and the size, so a re-embedded (changed) file never shows a stale picture.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrtool.io.decode import decode_bytes, decode_image


@dataclass(frozen=True)
class Rendition:
    """One rendered size: the longest side in pixels and the file format."""

    side: int
    format: str  # "JPEG" (thumbnails: small) or "PNG" (the detail view: lossless)

    @property
    def media_type(self) -> str:
        return "image/jpeg" if self.format == "JPEG" else "image/png"

    @property
    def suffix(self) -> str:
        return ".jpg" if self.format == "JPEG" else ".png"


def render(path: Path | Any, rendition: Rendition) -> bytes:
    """Decode ``path`` (a file, or a remote item with ``read_bytes()``) and encode it to fit a
    ``side`` x ``side`` box; raises ``DecodeError``."""
    from PIL import Image

    if isinstance(path, Path):
        decoded = decode_image(path, min_side=rendition.side)  # reduced-resolution decode where the codec can
    else:
        decoded = decode_bytes(path.read_bytes(), str(path.path), min_side=rendition.side)
    pixels = np.clip(decoded.pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    image.thumbnail((rendition.side, rendition.side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if rendition.format == "JPEG":
        image.save(buf, "JPEG", quality=85, optimize=True)
    else:
        image.save(buf, "PNG", compress_level=3)  # level 3: ~2x faster than the default for ~5 % more bytes
    return buf.getvalue()


class RenderCache:
    """Rendered images by key: memory LRU (``memory_bytes``) over an optional folder."""

    def __init__(self, folder: Path | None, memory_bytes: int) -> None:
        self.folder = folder
        self.memory_bytes = memory_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_render(self, key: str, path: Path | Any, rendition: Rendition) -> bytes:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return data
        file = self.folder / key[:2] / key if self.folder else None
        if file is not None and file.is_file():
            data = file.read_bytes()
        else:
            with self._lock:
                self.misses += 1
            data = render(path, rendition)
            if file is not None:
                self._write(file, data)
        self._remember(key, data)
        return data

    def _write(self, file: Path, data: bytes) -> None:
        """Whole files only (temp + rename): a killed server never leaves half a thumbnail."""
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, file)
        except OSError:  # a read-only workspace still serves, from memory
            pass

    def _remember(self, key: str, data: bytes) -> None:
        with self._lock:
            if key in self._items or len(data) > self.memory_bytes:
                return
            self._items[key] = data
            self._size += len(data)
            while self._size > self.memory_bytes:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)
