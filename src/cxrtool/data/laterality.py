"""Which side a finding is on: from radiologist boxes, from report text, and under a horizontal flip.

Sides are the **patient's**: ``left``, ``right`` or ``bilateral`` (on both sides, or not one side).
A frontal (PA or AP) radiograph in standard display orientation shows the patient's right on the
image's LEFT, so a box whose centre is left of the image midline is a right-sided finding.

Boxes (NIH ChestX-ray14 ``BBox_List_2017.csv``; ``bbox_json`` in ``nih_512/labels.csv``: x, y, w, h
in 1,024-px coordinates): a box is one-sided unless at least :data:`MIDLINE_SHARE` of its width lies
on each side of the midline, then it is bilateral. The boxes of one finding combine by union: all
on one side -> that side; boxes on both sides, or any bilateral box -> bilateral. Cardiomegaly
boxes give no side (the heart is a midline organ).

Report text: sentence by sentence, a finding word (:data:`FINDING_TERMS`) takes the side word that
modifies it ("left lower lobe atelectasis", "right-sided effusion": up to 5 words before it) or
follows it ("effusion on the left", "atelectasis in the right lower lobe": up to 6 words after),
never across "and"/"or"/"with"/punctuation or another finding. Negated mentions ("no left
effusion", "the left pneumothorax has resolved", "rule out right pneumothorax") give no side; the
negation reaches to the end of the sentence unless "but"/"however"/... ends it. Sides of several
mentions of one finding combine by union, as boxes do. The extractor prefers missing a side to
guessing one: docs/laterality.md lists what it does not handle.

The side words themselves (constants, report vocabulary, query side, flips :func:`swap_sides` and
:func:`flip_sides` for a trainer that mirrors images) live in :mod:`cxrtool.data.sides`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cxrtool.data.sides import BILATERAL, LEFT, RIGHT, SIDE_PATTERNS

NIH_BOX_WIDTH = 1024  # NIH boxes are in the original 1,024 x 1,024 pixel grid
# A box is bilateral when at least this share of its width lies on each side of the midline. On
# nih_512's 593 boxed images the lateral boxes that cross the midline fall into two groups: narrow
# retrocardiac / perihilar boxes with at most 29 % across (one-sided on the film), and boxes spanning
# both lungs with 32 % or more across; 0.3 separates them.
MIDLINE_SHARE = 0.3

# NIH box finding names -> prompt-bank labels, for the findings that have a side.
BOX_LABELS = {"Atelectasis": "Atelectasis", "Effusion": "Pleural Effusion", "Infiltrate": "Infiltration",
              "Infiltration": "Infiltration", "Mass": "Mass", "Nodule": "Nodule", "Pneumonia": "Pneumonia",
              "Pneumothorax": "Pneumothorax"}

# Report words -> prompt-bank labels (lower-case text, hyphens read as spaces).
FINDING_TERMS = {
    "Pleural Effusion": r"(?<!pericardial )effusions?|pleural fluid",
    "Pneumothorax": r"(?:hydro)?pneumothora(?:x|ces)",
    "Atelectasis": r"atelectas[ie]s|atelectatic",
    "Consolidation": r"consolidations?|consolidative",
    "Lung Opacity": r"opacit(?:y|ies)|opacifications?|opacified|air ?space (?:disease|opacit(?:y|ies))",
    "Infiltration": r"infiltrat(?:e|es|ion|ive)",
    "Pneumonia": r"(?:broncho)?pneumonias?",
    "Mass": r"mass(?:es)?(?! effect)",
    "Nodule": r"nodules?|nodular",
    "Pleural Thickening": r"pleural thickening|thickening of the pleura",
    "Fracture": r"fractures?",
    "Lung Lesion": r"lesions?",
}
LATERAL_LABELS = tuple(FINDING_TERMS)

_PSEUDO_NEGATION = re.compile(
    r"\b(?:no|without) (?:significant |interval |definite |appreciable )?(?:change|increase|decrease|worsening|"
    r"improvement|enlargement)\b|\bnot (?:significantly )?changed\b|\bnot only\b")
_PRE_NEGATION = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|resolution of|resolved|resolving|clear of|cleared|"
    r"clearing of|rule out|ruled out|r/o|evaluate for|evaluation for|assess for|exclude|excluded)\b")
_POST_NEGATION = {"resolved", "cleared", "absent", "removed", "not", "no", "excluded"}
_TERMINATION = re.compile(r"\b(?:but|however|although|though|whereas|except|aside from|apart from|yet)\b")
_BREAKERS = {",", ":", "and", "or", "with", "without", "but", "no", "not", "than", "versus", "vs", "from", "to",
             "is", "are", "was", "were", "has", "have", "had"}
_BEFORE_WINDOW, _AFTER_WINDOW, _COORDINATED_WINDOW = 5, 6, 3
_SENTENCE_END = re.compile(r"(?<!\d)[.;!?](?!\d)|\n")
_TOKEN = re.compile(r"[a-z0-9/]+|[,:]")
_FINDING_RES = {label: re.compile(rf"\b(?:{pattern})\b") for label, pattern in FINDING_TERMS.items()}


@dataclass(frozen=True)
class Box:
    """One radiologist box: finding name as given by the dataset, pixel x/y of the top-left corner, w/h."""

    finding: str
    x: float
    y: float
    w: float
    h: float


NON_FRONTAL_VIEWS = frozenset({"LATERAL", "LL", "RL", "LAT", "LLD", "RLD", "XTABLE LATERAL", "SWIMMERS"})


def frontal_view(view: str | None) -> bool:
    """Boxes give sides only on frontal films; an unknown view ('') counts as frontal (NIH has PA/AP only)."""
    return (view or "").strip().upper() not in NON_FRONTAL_VIEWS


def merge_sides(a: str | None, b: str | None) -> str | None:
    """Two sides of one finding: equal -> that side; left + right, or anything + bilateral -> bilateral."""
    if a is None or a == b:
        return b
    if b is None:
        return a
    return BILATERAL


def box_side(x: float, w: float, width: float = NIH_BOX_WIDTH) -> str:
    """The patient's side of one box on a frontal film (image left = patient right)."""
    mid = width / 2
    w = max(float(w), 1e-9)
    on_image_left = max(0.0, min(x + w, mid) - x) / w
    on_image_right = max(0.0, x + w - max(x, mid)) / w
    if min(on_image_left, on_image_right) >= MIDLINE_SHARE:
        return BILATERAL
    return RIGHT if on_image_left > on_image_right else LEFT


def sides_from_boxes(boxes: Iterable[Box], width: float = NIH_BOX_WIDTH,
                     labels: Mapping[str, str] = BOX_LABELS) -> dict[str, str]:
    """Label -> side for the boxed findings that have a side (others, e.g. Cardiomegaly, are left out)."""
    out: dict[str, str] = {}
    for box in boxes:
        label = labels.get(box.finding.strip())
        if label is not None:
            out[label] = merge_sides(out.get(label), box_side(box.x, box.w, width))
    return out


def parse_bbox_json(cell: str | None) -> list[Box]:
    """``[["Effusion", x, y, w, h], ...]`` (nih_512's ``bbox_json``) -> boxes; blank -> none.

    Raises ValueError with a one-line reason when the cell is not that shape.
    """
    if not (cell or "").strip():
        return []
    try:
        rows = json.loads(cell)
        return [Box(str(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in rows]
    except (json.JSONDecodeError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"bbox_json {cell[:60]!r} is not [[finding, x, y, w, h], ...] ({exc})") from None


# ---------------------------------------------------------------------------------------------- text
def _normalise(text: str) -> str:
    text = text.lower().replace("-", " ")
    return re.sub(r"[ \t]+", " ", _PSEUDO_NEGATION.sub(" unchanged ", text))


def _spans(pattern: re.Pattern, sentence: str, starts: list[int], ends: list[int]) -> list[tuple[int, int]]:
    """Token index ranges [first, last] of the pattern's matches."""
    out = []
    for m in pattern.finditer(sentence):
        first = next((i for i, s in enumerate(starts) if s >= m.start()), None)
        last = max((i for i, e in enumerate(ends) if e <= m.end()), default=None)
        if first is not None and last is not None and first <= last:
            out.append((first, last))
    return out


def _sentence_mentions(sentence: str) -> list[tuple[str, str | None, bool]]:
    """(label, side or None, negated) for each finding word in one normalised sentence."""
    tokens = list(_TOKEN.finditer(sentence))
    if not tokens:
        return []
    words = [t.group() for t in tokens]
    starts, ends = [t.start() for t in tokens], [t.end() for t in tokens]
    side_at: dict[int, str] = {}
    for side, pattern in SIDE_PATTERNS.items():  # bilateral first: "left and right" is one bilateral span
        for first, last in _spans(pattern, sentence, starts, ends):
            if not any(i in side_at for i in range(first, last + 1)):
                side_at.update({i: side for i in range(first, last + 1)})
    findings = [(label, first, last) for label, pattern in _FINDING_RES.items()
                for first, last in _spans(pattern, sentence, starts, ends)]
    finding_tokens = {i for _, a, b in findings for i in range(a, b + 1)}
    negations = [a for a, _ in _spans(_PRE_NEGATION, sentence, starts, ends)]
    terminations = [a for a, _ in _spans(_TERMINATION, sentence, starts, ends)]

    def look(indices: range) -> int | None:
        """Index of the first side word in ``indices`` before a breaker or another finding."""
        for i in indices:
            if i in side_at:
                return i
            if words[i] in _BREAKERS or i in finding_tokens:
                return None
        return None

    def before(first: int) -> str | None:
        """The modifying side, merged with a coordinated one ("small right and moderate left effusions")."""
        j = look(range(first - 1, max(-1, first - 1 - _BEFORE_WINDOW), -1))
        if j is None:
            return None
        side = side_at[j]
        while j > 0 and side_at.get(j - 1) == side:
            j -= 1
        i = j - 1
        while i >= 0 and j - i <= _COORDINATED_WINDOW and words[i] not in _BREAKERS and i not in finding_tokens:
            i -= 1
        if i >= 1 and words[i] in ("and", "or"):
            k = look(range(i - 1, max(-1, i - 1 - _COORDINATED_WINDOW), -1))
            side = merge_sides(side, side_at[k] if k is not None else None)
        return side

    out = []
    for label, first, last in findings:
        side = before(first)
        if side is None:
            j = look(range(last + 1, min(len(words), last + 1 + _AFTER_WINDOW)))
            side = side_at[j] if j is not None else None
        negated = any(n < first and not any(n < t < first for t in terminations) for n in negations)
        for i in range(last + 1, min(len(words), last + 1 + _AFTER_WINDOW)):  # "... has resolved"
            if words[i] in _POST_NEGATION:
                negated = True
                break
            if words[i] in (",", ":", "and", "or", "but", "with") or i in finding_tokens:
                break
        out.append((label, side, negated))
    return out


def sides_from_text(text: str | None) -> dict[str, str]:
    """Label -> side for the findings a report names with a side (negated mentions ignored)."""
    out: dict[str, str] = {}
    for sentence in _SENTENCE_END.split(_normalise(text or "")):
        for label, side, negated in _sentence_mentions(sentence):
            if side is not None and not negated:
                out[label] = merge_sides(out.get(label), side)
    return out


def sides_for_study(labels: Mapping[str, int], boxes: Iterable[Box] = (), text: str | None = None,
                    width: float = NIH_BOX_WIDTH) -> dict[str, str]:
    """A study's side map: boxes (drawn by radiologists) win per label, report text fills the rest;
    a label the study marks negative (0) keeps no side."""
    sides = {**sides_from_text(text), **sides_from_boxes(boxes, width)}
    return {k: v for k, v in sorted(sides.items()) if labels.get(k) != 0}
