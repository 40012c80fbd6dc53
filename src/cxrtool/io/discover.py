"""Finding the images in an archive folder: PACS exports, DICOM media, research sets, or a mix.

DICOMs are recognised by content (the 'DICM' signature), so files without an extension - the
usual case in PACS exports (``IM000001``) - are found too. A DICOMDIR (the index of a DICOM
medium) is not an image: it is read for the files its records reference, which count as DICOM
without sniffing, and each referenced file missing on disk is reported. Files no DICOMDIR
references are still found by the walk. What cannot be read at all (permissions, a folder that
cannot be listed) is reported, so it is never silently missing from a run. With
``every_file=True`` (embed, validate) every other entry gets its row too: a file that is not an
image ("not_image"), a hidden file or folder (name starting with '.'; a hidden folder is one row,
not walked), a DICOMDIR, a pipe or socket or a link to one, never opened ("skipped"); a link to
nothing fails with its reason like any unreadable file. So each regular file under the archive
ends embedded, skipped or failed, never unsaid. Directory symlinks are followed (research
data is often linked in: ``archive/nih -> /data/nih/images``); a link back into a folder already
walked (a loop, or a second way to the same folder) is reported once and not followed again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

from cxrtool.constants import DICOM_SUFFIXES, RASTER_SUFFIXES
from cxrtool.io.classify import MEDIA_DIRECTORY_REASON
from cxrtool.io.dicom_header import UnreadableDicomError, has_dicom_signature, open_dicom

DICOMDIR_NAME = "DICOMDIR"
MISSING_REFERENCE = "referenced by DICOMDIR but missing"


@dataclass(frozen=True)
class ArchiveFile:
    """One candidate image: absolute path, path relative to the archive root, and its kind.

    ``problem`` is set when discovery already knows the file cannot be used (unreadable, or
    referenced by a DICOMDIR but missing): the embed pipeline lists it in errors.jsonl with stage
    "discover" instead of silently leaving it out.
    """

    path: Path
    rel: str
    kind: str  # "dicom" | "raster" | "unknown" or "other" (only with a problem)
    problem: str | None = None
    problem_kind: str = "error"  # how errors.jsonl lists it: "error", "not_image" or "skipped" (said, not failures)

    def read_bytes(self) -> bytes:
        """The file's bytes (a work item's one read; a remote item fetches them instead)."""
        return self.path.read_bytes()


def archive_rel(path: Path, root: Path) -> str:
    """``path`` relative to the archive root, as stored in shards. A name that is not valid UTF-8
    (any byte string is a legal file name) is percent-encoded from its bytes, so it still gets an
    id and a row, losslessly: :func:`archive_path` turns it back."""
    rel = path.relative_to(root).as_posix()
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return quote(os.fsencode(rel), safe="/ !#$&'()*+,;=@[]~-._")
    return rel


def archive_path(root: Path, rel: str) -> Path:
    """The file an archive-relative path names (the inverse of :func:`archive_rel`)."""
    plain = root / rel
    if plain.exists() or "%" not in rel:
        return plain
    return root / os.fsdecode(unquote_to_bytes(rel))


def _reason(exc: OSError) -> str:
    """An OSError as a short reason without its file name (absolute paths stay out of outputs)."""
    return exc.strerror or type(exc).__name__


def _classify(path: Path) -> tuple[str | None, str | None]:
    """(kind, problem): kind "dicom", "raster", None (not an image we read) or "unknown" when
    the file cannot be opened to look for the DICOM signature."""
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return "raster", None
    if suffix in DICOM_SUFFIXES:
        return "dicom", None
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        return "unknown", f"unreadable ({_reason(exc)}): cannot tell whether it is a DICOM"
    return ("dicom" if has_dicom_signature(head) else None), None


def classify_file(path: Path) -> str | None:
    """Return "dicom", "raster" or None (not an image we read, or unreadable)."""
    kind, problem = _classify(path)
    return None if problem else kind


def dicomdir_references(dicomdir: Path) -> list[Path]:
    """Files referenced by a DICOMDIR's directory records (ReferencedFileID components are
    relative to the DICOMDIR's folder). Raises on an unreadable DICOMDIR (``UnreadableDicomError``
    when pydicom cannot parse it)."""
    refs = []
    for record in open_dicom(dicomdir).get("DirectoryRecordSequence", []):
        ref = record.get("ReferencedFileID")
        if ref:
            parts = [ref] if isinstance(ref, str) else [str(p) for p in ref]
            refs.append(dicomdir.parent.joinpath(*parts))
    return refs


def _other_entry(path: Path, rel: str) -> ArchiveFile:
    """The row of an entry that is not an image cxrtool reads (see ``every_file``)."""
    if path.name.upper() == DICOMDIR_NAME:
        return ArchiveFile(path.absolute(), rel, "other", MEDIA_DIRECTORY_REASON, "skipped")
    if path.name.startswith("."):
        return ArchiveFile(path.absolute(), rel, "other", "hidden file (name starts with '.')", "skipped")
    if path.is_symlink() and not path.exists():
        return ArchiveFile(path.absolute(), rel, "other", "a link to nothing (dangling symlink)", "skipped")
    if not path.is_file():
        return ArchiveFile(path.absolute(), rel, "other", "not a regular file (pipe, socket or device)", "skipped")
    suffix = path.suffix.lower() or "no extension"
    return ArchiveFile(path.absolute(), rel, "other", f"not an image ({suffix}; no DICOM signature)", "not_image")


def discover_archive(root: str | Path, every_file: bool = False) -> Iterator[ArchiveFile]:
    """Yield the images under ``root`` in a stable (sorted) order; a single file is allowed.

    Files referenced by a DICOMDIR are matched case-insensitively (media written on ISO 9660
    spell IDs in upper case; copies on a case-sensitive disk may not). ``every_file``: also
    yield a row (with its ``problem``) for every entry that is not an image (module docstring).
    """
    root = Path(root)
    if root.is_file():
        kind, problem = _classify(root)
        if kind and root.name.upper() != DICOMDIR_NAME:
            yield ArchiveFile(root.resolve(), root.name, kind, problem)
        elif every_file:
            yield _other_entry(root, root.name)
        return
    referenced: dict[str, Path] = {}  # lower-cased archive-relative path -> path the DICOMDIR names
    seen: set[str] = set()
    unlisted: list[OSError] = []
    walked: dict[tuple[int, int], str] = {}  # (device, inode) of each folder walked -> its archive path
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted.append, followlinks=True):
        while unlisted:  # a folder that cannot be listed: its files would vanish silently
            exc = unlisted.pop(0)
            folder = Path(exc.filename or dirpath)
            yield ArchiveFile(folder.resolve(), archive_rel(folder, root), "unknown",
                              f"folder cannot be listed ({_reason(exc)})")
        here = Path(dirpath)
        try:
            st = here.stat()
            walked.setdefault((st.st_dev, st.st_ino), archive_rel(here, root) or ".")
        except OSError:
            pass
        keep = []
        for d in sorted(dirnames):
            sub = here / d
            if d.startswith("."):
                if every_file:
                    yield ArchiveFile(sub.absolute(), archive_rel(sub, root), "other",
                                      "hidden folder (name starts with '.'): not walked", "skipped")
                continue
            try:
                st = sub.stat()
            except OSError as exc:  # a dangling link or an unreadable folder: said, not skipped silently
                yield ArchiveFile(sub.absolute(), archive_rel(sub, root), "unknown",
                                  f"folder cannot be opened ({_reason(exc)})")
                continue
            first = walked.get((st.st_dev, st.st_ino))
            target = sub.resolve() if sub.is_symlink() else None
            if target is not None and first is None and target.is_relative_to(real_root):
                first = archive_rel(target, real_root)  # the walk reaches it by its own path
            if first is not None:
                loop = target is not None and (target == here.resolve() or target in here.resolve().parents)
                what = "a link back into a folder above it (a loop)" if loop else "a second way to a folder"
                yield ArchiveFile(sub.absolute(), archive_rel(sub, root), "unknown",
                                  f"{what} ({first}): not followed", "skipped")
                continue
            walked[(st.st_dev, st.st_ino)] = archive_rel(sub, root)
            keep.append(d)
        dirnames[:] = keep
        if every_file:
            for name in sorted(n for n in filenames if n.startswith(".")):
                yield _other_entry(here / name, archive_rel(here / name, root))
        names = sorted(n for n in filenames if not n.startswith("."))
        for name in (n for n in names if n.upper() == DICOMDIR_NAME):
            path = Path(dirpath) / name
            try:
                refs = dicomdir_references(path)
            except Exception as exc:
                cause = exc.cause if isinstance(exc, UnreadableDicomError) else type(exc).__name__
                yield ArchiveFile(path.resolve(), archive_rel(path, root), "dicom",
                                  f"unreadable DICOMDIR ({cause})")
                continue
            for ref in refs:
                try:
                    referenced.setdefault(archive_rel(ref, root).lower(), ref)
                except ValueError:  # outside the archive: not ours to report
                    continue
        for name in names:
            path = Path(dirpath) / name
            rel = archive_rel(path, root)
            if name.upper() == DICOMDIR_NAME:
                if every_file:
                    yield _other_entry(path, rel)
                continue
            if rel.lower() in referenced:
                seen.add(rel.lower())
                yield ArchiveFile(path.resolve(), rel, "dicom")
                continue
            if not path.is_file() and path.exists():  # a pipe or a link to one (opening it would wait forever)
                if every_file:
                    yield _other_entry(path, rel)
                continue
            kind, problem = _classify(path)
            if kind:
                yield ArchiveFile(path.resolve(), rel, kind, problem)
            elif every_file:
                yield _other_entry(path, rel)
    for exc in unlisted:
        folder = Path(exc.filename or root)
        yield ArchiveFile(folder.resolve(), archive_rel(folder, root), "unknown",
                          f"folder cannot be listed ({_reason(exc)})")
    for key in sorted(set(referenced) - seen):
        ref = referenced[key]
        yield ArchiveFile(ref.resolve(), archive_rel(ref, root), "dicom", MISSING_REFERENCE)
