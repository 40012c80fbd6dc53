"""Which archive objects to embed: a header-only check before any pixel is decoded.

Real PACS exports mix radiographs with structured reports, presentation states, key-object
selections, dose reports, encapsulated PDFs, CT/MR series and multi-frame objects. Each file
gets a keep/skip decision with a one-line reason from its header alone (cheap: no pixels read).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtool.errors import DecodeError
from cxrtool.io.decode import dicom_safe_meta
from cxrtool.privacy import identity_fields

# Modalities of projection radiographs. Secondary captures (OT/SC) only on request.
RADIOGRAPH_MODALITIES = ("CR", "DX")
# Media Storage Directory Storage: a DICOMDIR, the index of a DICOM medium (no image of its own).
MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
MEDIA_DIRECTORY_REASON = "DICOMDIR (media directory)"


@dataclass(frozen=True)
class HeaderFilter:
    """Keep rules. ``None`` means "any"; comparisons are case-insensitive."""

    modalities: tuple[str, ...] | None = RADIOGRAPH_MODALITIES
    body_parts: tuple[str, ...] | None = None
    views: tuple[str, ...] | None = None
    multiframe: bool = False

    def skip_reason(self, meta: dict[str, Any]) -> str | None:
        """None to keep the object, else why it is skipped."""
        if meta.get("media_directory"):
            return MEDIA_DIRECTORY_REASON
        if not meta.get("has_pixels"):
            return f"not an image ({meta.get('Modality') or 'no pixel data'})"
        modality = str(meta.get("Modality", "") or "").upper()
        if self.modalities is not None and modality not in {m.upper() for m in self.modalities}:
            return f"modality {modality or 'missing'} not in {','.join(self.modalities)}"
        frames = int(meta.get("NumberOfFrames", 1) or 1)
        if frames > 1 and not self.multiframe:
            return f"multi-frame object ({frames} frames)"
        part = str(meta.get("BodyPartExamined", "") or "").upper()
        if self.body_parts is not None and part and part not in {b.upper() for b in self.body_parts}:
            return f"body part {part} not in {','.join(self.body_parts)}"
        view = str(meta.get("ViewPosition", "") or "").upper()
        if self.views is not None and view and view not in {v.upper() for v in self.views}:
            return f"view {view} not in {','.join(self.views)}"
        return None


def read_dicom_header(path: Path, pseudonym_key: str | None = None, keep_study_date: bool = False,
                     data: bytes | None = None) -> dict[str, Any]:
    """PHI-safe header fields plus has_pixels / NumberOfFrames, without reading pixel data; with
    a key, keyed-hash patient/accession pseudonyms (see :mod:`cxrtool.privacy`). ``data``: the
    file's bytes if the caller has read them already (``path`` then only names the file in errors).

    A DICOMDIR (media directory) under another name is not an error: it gets
    ``media_directory=True`` and :meth:`HeaderFilter.skip_reason` skips it.
    """
    import io

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path if data is None else io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        raise DecodeError(path, f"unreadable DICOM header ({type(exc).__name__}: {exc})") from None
    media_class = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    if media_class == MEDIA_DIRECTORY_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return {"media_directory": True, "has_pixels": False, "NumberOfFrames": 1}
    if "SOPClassUID" not in ds and "Rows" not in ds:
        raise DecodeError(path, "no readable DICOM attributes (truncated or corrupt file)")
    meta = dicom_safe_meta(ds)
    meta["has_pixels"] = "Rows" in ds and "Columns" in ds
    meta["NumberOfFrames"] = int(getattr(ds, "NumberOfFrames", 1) or 1)
    meta.update(identity_fields(ds, pseudonym_key, keep_study_date))
    return meta
