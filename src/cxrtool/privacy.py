"""Identity handling in one place: what of a patient's identity may reach an output, and how.

Default: nothing. Patient names, birth dates, IDs, accession numbers and dates are never
written. When the user supplies a secret (``--pseudonym-key`` or $CXRTOOL_PSEUDONYM_KEY), patient
ID and accession number are written as keyed hashes (HMAC-SHA256): the same key links the same
patient across runs, and without it the values cannot be reversed. The study date is kept only
when explicitly asked for. The header fields themselves are read (and hashed) only in
``io/dicom_header.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import os

PSEUDONYM_ENV = "CXRTOOL_PSEUDONYM_KEY"


def pseudonym(value: str, key: str, prefix: str = "pt-") -> str:
    """Keyed (HMAC-SHA256) pseudonym: stable per key, not reversible without it."""
    return prefix + hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def resolve_key(key: str | None) -> str | None:
    return key or os.environ.get(PSEUDONYM_ENV) or None

