"""Identity handling in one place: what of a patient's identity may reach an output, and how.

Default: nothing. Patient names, birth dates, IDs, accession numbers and dates are never
written. When the user supplies a secret (``--pseudonym-key`` or $CXRTOOL_PSEUDONYM_KEY), patient
ID and accession number are written as keyed hashes (HMAC-SHA256): the same key links the same
patient across runs, and without it the values cannot be reversed. The study date is kept only
when explicitly asked for.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

PSEUDONYM_ENV = "CXRTOOL_PSEUDONYM_KEY"


def pseudonym(value: str, key: str, prefix: str = "pt-") -> str:
    """Keyed (HMAC-SHA256) pseudonym: stable per key, not reversible without it."""
    return prefix + hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def resolve_key(key: str | None) -> str | None:
    return key or os.environ.get(PSEUDONYM_ENV) or None


def identity_fields(ds: Any, key: str | None, keep_study_date: bool = False) -> dict[str, str | None]:
    """The identity columns an output may carry for one DICOM object, per the rules above."""
    out: dict[str, str | None] = {"patient_key": None, "accession_key": None, "study_date": None}
    if key:
        patient = str(getattr(ds, "PatientID", "") or "")
        accession = str(getattr(ds, "AccessionNumber", "") or "")
        out["patient_key"] = pseudonym(patient, key) if patient else None
        out["accession_key"] = pseudonym(accession, key, prefix="acc-") if accession else None
    if keep_study_date:
        out["study_date"] = str(getattr(ds, "StudyDate", "") or "") or None
    return out
