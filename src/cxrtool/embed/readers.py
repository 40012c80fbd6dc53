"""Readers: what an embed run works through, as work items (:class:`~cxrtool.io.discover.ArchiveFile`).

A reader only lists; reading bytes and decoding is the mapper's, in whichever process the
distributor puts it. :class:`ArchiveReader` walks an archive folder (DICOM by content, PNG/JPEG,
DICOMDIR references); :class:`FileListReader` takes an explicit list (a query result, a file list
from a PACS export). Another source (a PACS over DICOMweb) is one more class with ``items()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cxrtool.io.discover import ArchiveFile, classify_file, discover_archive


class ArchiveReader:
    """Every image under an archive folder (or one file), in a stable sorted order, and a row for
    every other entry (not an image, hidden, a link to nothing), so each file ends in one row."""

    def __init__(self, archive: Path) -> None:
        self.root = archive

    def items(self) -> list[ArchiveFile]:
        return list(discover_archive(self.root, every_file=True))


class FileListReader:
    """The given files, named relative to ``root`` in the shards; a missing or unreadable file
    becomes an item with a ``problem`` (an errors.jsonl row), never a silent gap."""

    def __init__(self, files: Iterable[str | Path], root: Path) -> None:
        self.files = [Path(f) for f in files]
        self.root = root

    def items(self) -> list[ArchiveFile]:
        out = []
        for path in self.files:
            rel = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else path.name
            kind = classify_file(path) if path.is_file() else None
            problem = None if kind else ("no such file" if not path.exists() else "not an image cxrtool reads")
            out.append(ArchiveFile(path, rel, kind or "unknown", problem))
        return out


class DicomWebReader:
    """The instances a DICOMweb server holds that pass ``keep`` (series-level Modality and
    BodyPartExamined, checked from QIDO answers before any download), within the StudyDate range or
    the given studies. ``filtered`` counts what the query left out, per reason, after ``items()``."""

    def __init__(self, base: str, keep: Any, since: str | None = None, until: str | None = None,
                 studies: tuple[str, ...] | None = None, connections: int = 4) -> None:
        self.base, self.keep, self.since, self.until, self.studies = base, keep, since, until, studies
        self.connections = connections
        self.filtered: dict[str, int] = {}

    def items(self) -> list[Any]:
        from cxrtool.io.dicomweb import client_for, list_instances

        listing = list_instances(client_for(self.base, self.connections), self.keep, self.since, self.until,
                                 self.studies, self.connections)
        self.filtered = dict(listing.filtered)
        return listing.items
