"""Metadata pre-filters: which rows may be ranked at all (applied *before* the nearest-neighbour
search through FAISS id selection, so a filtered top-k is a true top-k of the matching rows;
clip-retrieval filters after the top-k and can return fewer or none).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxrtool.errors import WorkspaceError


def _date(value: str | None, name: str) -> str | None:
    if value in (None, ""):
        return None
    digits = re.sub(r"[-/.]", "", str(value))
    if not re.fullmatch(r"\d{4}(\d{2}(\d{2})?)?", digits):
        raise WorkspaceError(f"{name} {value!r} is not a date", "use YYYY-MM-DD, YYYYMMDD, YYYY-MM or YYYY")
    return digits


@dataclass(frozen=True)
class Filters:
    """Keep rules; empty means no restriction. Text comparisons ignore case; dates are DICOM
    StudyDate (only present when embedded with ``--keep-study-date``), bounds inclusive."""

    views: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    date_from: str | None = None
    date_to: str | None = None
    patient_keys: tuple[str, ...] = ()
    study_keys: tuple[str, ...] = ()
    path_glob: str | None = None

    def __post_init__(self) -> None:
        for name in ("views", "modalities", "body_parts", "patient_keys", "study_keys"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            parts = tuple(p.strip() for v in (value or ()) for p in str(v).split(",") if p.strip())
            object.__setattr__(self, name, parts)
        object.__setattr__(self, "date_from", _date(self.date_from, "date_from"))
        object.__setattr__(self, "date_to", _date(self.date_to, "date_to"))
        # hashable identity, computed once: search caches the matching rows per filter
        object.__setattr__(self, "_key", tuple((f.name, getattr(self, f.name)) for f in fields(self)))

    def is_empty(self) -> bool:
        return not any(value for _, value in self._key)

    def key(self) -> tuple:
        return self._key

    def mask(self, table: pa.Table) -> np.ndarray:
        """Boolean keep-mask over the rows of ``table`` (shard metadata columns)."""
        keep = pa.array(np.ones(table.num_rows, dtype=bool))
        names = set(table.column_names)

        def col(name: str, flag: str) -> pa.ChunkedArray:
            if name not in names:
                raise WorkspaceError(f"the filter {flag} does not apply to this collection (no {name} column)")
            return table.column(name)

        for values, column, flag in ((self.views, "view", "--view"), (self.modalities, "modality", "--modality"),
                                     (self.body_parts, "body_part", "--body-part")):
            if values:
                upper = pc.utf8_upper(pc.fill_null(col(column, flag), ""))
                keep = pc.and_(keep, pc.is_in(upper, value_set=pa.array([v.upper() for v in values])))
        for values, column, flag in ((self.patient_keys, "patient_key", "--patient"),
                                     (self.study_keys, "study_key", "--study")):
            if values:
                keep = pc.and_(keep, pc.fill_null(pc.is_in(col(column, flag), value_set=pa.array(list(values))),
                                                  False))
        if self.date_from or self.date_to:
            dates = col("study_date", "--date-from/--date-to")
            if dates.null_count == len(dates):
                raise WorkspaceError("no study dates in this collection",
                                     "embed with --keep-study-date to filter by date")
            if self.date_from:  # a partial bound (YYYY or YYYYMM) means its first day ...
                keep = pc.and_(keep, pc.fill_null(pc.greater_equal(dates, self.date_from.ljust(8, "0")), False))
            if self.date_to:  # ... and its last day here
                keep = pc.and_(keep, pc.fill_null(pc.less_equal(dates, self.date_to.ljust(8, "9")), False))
        if self.path_glob:
            column = "path" if "path" in names else "report_key"
            regex = fnmatch.translate(self.path_glob).replace("\\Z", "\\z")
            keep = pc.and_(keep, pc.match_substring_regex(pc.fill_null(col(column, "--path"), ""), regex))
        return np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)
