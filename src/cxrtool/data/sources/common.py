"""What every source adapter shares: reject records, label parsing, patient-level splits."""

from __future__ import annotations

import gzip
import io
from dataclasses import asdict, dataclass
from pathlib import Path

from cxrtool.data.manifest import SPLITS, split_for_patient
from cxrtool.errors import ManifestError

LABEL_CELLS = {"": None, "1": 1, "1.0": 1, "true": 1, "0": 0, "0.0": 0, "false": 0, "-1": -1, "-1.0": -1}


@dataclass
class Reject:
    """A source row or study with a problem. ``action``: 'dropped' (not in the manifest) or
    'kept' (in the manifest, but flagged: e.g. its image file is not on this machine)."""

    where: str
    reason: str
    action: str
    study_key: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_label(cell: str | None) -> int | None:
    """'1'/'1.0' -> 1, '0' -> 0, '-1' -> -1, blank -> None (not mentioned); else ValueError."""
    key = (cell or "").strip().lower()
    if key not in LABEL_CELLS:
        raise ValueError(cell)
    return LABEL_CELLS[key]


def first_bad_label(row: dict[str, str], columns: list[str]) -> str | None:
    """The first label column whose cell is not 1 / 0 / -1 / blank (for the reject reason)."""
    return next((c for c in columns if (row.get(c) or "").strip().lower() not in LABEL_CELLS), None)


def normalise_split(value: str, where: str) -> str:
    split = value.strip().lower()
    split = {"val": "validate", "valid": "validate", "validation": "validate", "dev": "validate"}.get(split, split)
    if split not in SPLITS:
        raise ManifestError(f"{where}: split {value!r} is not one of {SPLITS}")
    return split


def hashed_split(patient_key: str, validate: float, test: float, salt: str = "cxrtool") -> str:
    return split_for_patient(patient_key, validate, test, salt)


def open_text(path: Path) -> io.TextIOBase:
    """Open a CSV/TXT that may be gzip-compressed (the published tables often are)."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - the caller closes it
