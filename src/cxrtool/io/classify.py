"""Which archive objects to embed: a header-only check before any pixel is decoded.

Real PACS exports mix radiographs with structured reports, presentation states, key-object
selections, dose reports, encapsulated PDFs, CT/MR series and multi-frame objects. Each file
gets a keep/skip decision with a one-line reason from its header alone (cheap: no pixels read),
as :func:`cxrtool.io.dicom_header.read_dicom_header` gives it (allow-listed fields only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cxrtool.constants import RADIOGRAPH_MODALITIES

MEDIA_DIRECTORY_REASON = "DICOMDIR (media directory)"
# BodyPartExamined spellings of a chest seen in real exports ("CHEST", "THORAX", "PORTABLE CHEST",
# "CHEST PA", Spanish/Italian "TORAX", "LUNG", "CHESTABDOMEN"): a body-part filter naming CHEST keeps
# any value containing one of these, so a chest-only run does not lose a site's own spelling.
CHEST_WORDS = ("CHEST", "THORAX", "TORAX", "LUNG")


def is_chest(body_part: str) -> bool:
    """True when a BodyPartExamined value names the chest (see :data:`CHEST_WORDS`)."""
    part = body_part.upper()
    return any(word in part for word in CHEST_WORDS)


@dataclass(frozen=True)
class HeaderFilter:
    """Keep rules. ``None`` means "any"; comparisons are case-insensitive."""

    modalities: tuple[str, ...] | None = RADIOGRAPH_MODALITIES
    body_parts: tuple[str, ...] | None = None
    views: tuple[str, ...] | None = None
    multiframe: bool = False

    def keeps_body_part(self, part: str) -> bool:
        """A header's BodyPartExamined against the filter: exact names, and every chest spelling
        when the filter names CHEST. An absent value is kept by the caller (many headers lack it)."""
        wanted = {b.upper() for b in self.body_parts or ()}
        return self.body_parts is None or part.upper() in wanted or ("CHEST" in wanted and is_chest(part))

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
        if self.body_parts is not None and part and not self.keeps_body_part(part):
            return f"body part {part} not in {','.join(self.body_parts)}"
        view = str(meta.get("ViewPosition", "") or "").upper()
        if self.views is not None and view and view not in {v.upper() for v in self.views}:
            return f"view {view} not in {','.join(self.views)}"
        return None

