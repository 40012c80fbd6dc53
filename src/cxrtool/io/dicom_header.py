"""DICOM headers in one place: opening a file quietly, and the only fields that may leave it.

Every pydicom read in cxrtool goes through :func:`open_dicom` (warnings silenced, a one-line
:class:`~cxrtool.errors.DecodeError` on failure). What a header may give an output is decided here:
the allow-list :data:`SAFE_DICOM_FIELDS` (identifiers of objects, not of people) and, only with a
key, keyed-hash patient/accession pseudonyms (:func:`identity_fields`; rules in :mod:`cxrtool.privacy`).
Patient names, birth dates, raw IDs and accession numbers are read only to be hashed, never returned.
:func:`read_dicom_header` is the allow-listed reader that ``embed`` (``embed/mapper.py``) and
``prepare dicom`` use; the pixel decoder (``io/decode.py``) opens the whole dataset here and keeps
the same :func:`dicom_safe_meta`.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

from cxrtool.errors import DecodeError
from cxrtool.privacy import pseudonym

# DICOM attributes that are safe to carry into outputs (identifiers of objects, not of people).
# Patient name, birth date, IDs, dates, institution and free-text fields are never read out.
SAFE_DICOM_FIELDS = (
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "ViewPosition",
    "BodyPartExamined",
    "PhotometricInterpretation",
    "BitsStored",
    "Rows",
    "Columns",
    "Manufacturer",
)
# Media Storage Directory Storage: a DICOMDIR, the index of a DICOM medium (no image of its own).
MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"


class UnreadableDicomError(DecodeError):
    """pydicom could not parse the file. ``cause`` is the parser's exception type alone, for outputs
    that must not quote the parser's message (it can carry file content or paths)."""

    def __init__(self, path: object, reason: str, cause: str) -> None:
        super().__init__(path, reason)
        self.cause = cause


# Value representations, to tell an explicit-VR element from other bytes.
_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF", b"OL",
        b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR",
        b"US", b"UT", b"UV"}


def has_dicom_signature(head: bytes) -> bool:
    """True if these leading bytes are DICOM: the Part 10 signature ('DICM' after a 128-byte
    preamble), or a file written without preamble and prefix (older modalities and some
    toolkits): it starts with a little-endian group 0002 (file meta) or 0008 element, explicit VR
    (a known VR) or implicit VR (a plausible length)."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return is_bare_dicom(head)


def is_bare_dicom(head: bytes) -> bool:
    """A DICOM dataset without the 128-byte preamble and 'DICM' prefix (see :func:`has_dicom_signature`)."""
    if len(head) < 8 or head[1] != 0 or head[0] not in (2, 8) or head[3] > 0x01:
        return False
    if head[4:6] in _VRS:
        return True
    return int.from_bytes(head[4:8], "little") < 1 << 16  # implicit VR: a short first element


def open_dicom(path: Path, data: bytes | None = None, pixels: bool = False) -> Any:
    """The pydicom dataset, header only unless ``pixels``; ``data``: the file's bytes if the caller
    has read them already (``path`` then only names the file in errors). Raises
    :class:`UnreadableDicomError` with a one-line reason; pydicom's warnings are silenced (truncation
    warnings: the error says it once)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return pydicom.dcmread(path if data is None else io.BytesIO(data), stop_before_pixels=not pixels)
            except InvalidDicomError:
                return _bare_dicom(path, data, pixels)
    except Exception as exc:  # no DICM prefix, truncated headers, bad lengths ...
        cause = type(exc).__name__
        if pixels and isinstance(exc, InvalidDicomError):  # the decoder's wording, kept as it was
            raise UnreadableDicomError(path, f"not a valid DICOM file ({exc})", cause) from None
        raise UnreadableDicomError(path, f"unreadable DICOM header ({cause}: {exc})", cause) from None


def _bare_dicom(path: Path, data: bytes | None, pixels: bool) -> Any:
    """A DICOM written without preamble and 'DICM' prefix: read with ``force`` only when its first
    bytes are a DICOM element (never for arbitrary files), with the transfer syntax its file meta
    names, else the standard's default (implicit VR little endian)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ImplicitVRLittleEndian

    if data is None:
        with open(path, "rb") as fh:
            head = fh.read(8)
    else:
        head = data[:8]
    if not is_bare_dicom(head):
        raise InvalidDicomError("no DICM prefix and no DICOM element at the start")
    ds = pydicom.dcmread(path if data is None else io.BytesIO(data), stop_before_pixels=not pixels, force=True)
    if not getattr(ds.file_meta, "TransferSyntaxUID", None):
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def dicom_safe_meta(ds: Any) -> dict[str, Any]:
    """The PHI-free subset of a DICOM header that cxrtool keeps (see ``SAFE_DICOM_FIELDS``)."""
    meta: dict[str, Any] = {}
    for name in SAFE_DICOM_FIELDS:
        value = getattr(ds, name, None)
        if value is None or value == "":
            continue
        meta[name] = int(value) if isinstance(value, int) else str(value)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None:
        meta["TransferSyntaxUID"] = str(ts)
    return meta


def identity_fields(ds: Any, key: str | None, keep_study_date: bool = False) -> dict[str, str | None]:
    """The identity columns an output may carry for one DICOM object: keyed-hash patient and
    accession pseudonyms only with a key, the study date only on request (:mod:`cxrtool.privacy`)."""
    out: dict[str, str | None] = {"patient_key": None, "accession_key": None, "study_date": None}
    if key:
        patient = str(getattr(ds, "PatientID", "") or "")
        accession = str(getattr(ds, "AccessionNumber", "") or "")
        out["patient_key"] = pseudonym(patient, key) if patient else None
        out["accession_key"] = accession_pseudonym(accession, key) if accession else None
    if keep_study_date:
        out["study_date"] = str(getattr(ds, "StudyDate", "") or "") or None
    return out


def accession_pseudonym(accession: str, key: str) -> str:
    """The ``accession_key`` of an accession number: lets a table keyed by accession number (reports)
    be matched to headers without the reader ever returning the number itself."""
    return pseudonym(accession, key, prefix="acc-")


def read_dicom_header(path: Path, pseudonym_key: str | None = None, keep_study_date: bool = False,
                      data: bytes | None = None) -> dict[str, Any]:
    """PHI-safe header fields plus has_pixels / NumberOfFrames, without reading pixel data; with
    a key, keyed-hash patient/accession pseudonyms (:func:`identity_fields`). ``data``: the file's
    bytes if the caller has read them already (``path`` then only names the file in errors).

    A DICOMDIR (media directory) under another name is not an error: it gets
    ``media_directory=True`` (``io/classify.py`` skips it).
    """
    ds = open_dicom(path, data)
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

