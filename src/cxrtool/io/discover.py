"""Finding the images in an archive folder: PACS exports, research sets, or a mix.

DICOMs are recognised by content (the 'DICM' signature), so files without an extension - the
usual case in PACS exports (``IM000001``) - are found too. Everything else is skipped quietly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cxrtool.constants import DICOM_SUFFIXES, RASTER_SUFFIXES
from cxrtool.io.decode import is_dicom_file


@dataclass(frozen=True)
class ArchiveFile:
    """One candidate image: absolute path, path relative to the archive root, and its kind."""

    path: Path
    rel: str
    kind: str  # "dicom" | "raster"


def classify_file(path: Path) -> str | None:
    """Return "dicom", "raster" or None (not an image we read)."""
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return "raster"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    return "dicom" if is_dicom_file(path) else None


def discover_archive(root: str | Path) -> Iterator[ArchiveFile]:
    """Yield the images under ``root`` in a stable (sorted) order; a single file is allowed."""
    root = Path(root)
    if root.is_file():
        kind = classify_file(root)
        if kind:
            yield ArchiveFile(root.resolve(), root.name, kind)
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            kind = classify_file(path)
            if kind:
                yield ArchiveFile(path.resolve(), path.relative_to(root).as_posix(), kind)
