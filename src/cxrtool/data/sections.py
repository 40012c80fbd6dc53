"""Report text -> sections (findings, impression, ...), robust to the layouts real reports use.

Handles "FINAL REPORT" preambles, headers in their common spellings (FINDINGS / FINDING /
FINDINGS AND IMPRESSION, IMPRESSION / IMPRESSIONS / CONCLUSION / SUMMARY, ...), headers inline
after a full stop, missing sections, and de-identification marks (MIMIC's ``___``, OpenI's
``XXXX``), which are removed from the text the model sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# canonical section -> header spellings (matched case-insensitively, followed by ':' or a newline)
SECTION_HEADERS: dict[str, tuple[str, ...]] = {
    "findings": ("findings and impression", "findings/impression", "findings", "finding"),
    "impression": ("impressions", "impression", "conclusions", "conclusion", "summary", "opinion"),
    "indication": ("indication", "indications", "clinical indication", "reason for exam", "reason for study",
                   "clinical history", "history", "clinical information"),
    "comparison": ("comparison", "comparisons"),
    "technique": ("technique", "examination", "exam", "procedure"),
    "recommendation": ("recommendations", "recommendation"),
    "notification": ("notification",),
    "wet_read": ("wet read",),
}
_LOOKUP = {spelling: name for name, spellings in SECTION_HEADERS.items() for spelling in spellings}
_HEADER_RE = re.compile(
    r"(?:(?<=^)|(?<=\n)|(?<=\.\s)|(?<=\.))\s*("
    + "|".join(sorted((re.escape(s) for s in _LOOKUP), key=len, reverse=True))
    + r")\s*:",
    re.IGNORECASE,
)
_DEID_RE = re.compile(r"_{2,}|\bX{2,}\b|X{3,}")
_PREAMBLE_RE = re.compile(r"^\s*(final report|preliminary report|addendum)\b[:\s]*", re.IGNORECASE)


@dataclass
class ReportSections:
    findings: str | None
    impression: str | None
    other: dict[str, str]
    full: str

    def main_text(self) -> str | None:
        """The one text to use when a single text is required: the longer non-empty section."""
        candidates = [t for t in (self.findings, self.impression) if t]
        return max(candidates, key=len) if candidates else None

    def observations(self) -> str:
        """Findings and impression together (what was seen, not the indication's question), else the full text."""
        return " ".join(t for t in (self.findings, self.impression) if t) or self.full


def clean_text(text: str) -> str:
    """Remove de-identification marks and collapse whitespace."""
    text = _DEID_RE.sub(" ", text)
    text = re.sub(r"\s+([.,;:])", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def parse_report(text: str | None) -> ReportSections:
    """Split a report into sections; text before the first header is kept under 'preamble'."""
    raw = (text or "").replace("\r\n", "\n")
    body = _PREAMBLE_RE.sub("", raw)
    matches = list(_HEADER_RE.finditer(body))
    parts: dict[str, str] = {}
    if matches and matches[0].start() > 0:
        parts["preamble"] = body[: matches[0].start()]
    elif not matches:
        parts["preamble"] = body
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(body)
        name = _LOOKUP[m.group(1).lower()]
        chunk = body[m.end() : end]
        parts[name] = (parts[name] + " " + chunk) if name in parts else chunk
    cleaned = {k: clean_text(v) for k, v in parts.items()}
    cleaned = {k: v for k, v in cleaned.items() if v}
    findings = cleaned.pop("findings", None)
    impression = cleaned.pop("impression", None)
    return ReportSections(findings, impression, cleaned, clean_text(raw))
