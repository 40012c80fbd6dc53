"""Side words in one place: the patient's sides, the words that name them, and what is built on them.

A side is the **patient's**: ``left``, ``right`` or ``bilateral``. Three readers use the words and
must agree on them: a search query's leading side ("left pleural effusion"), side mentions in report
text and prompts (``data/laterality.py``, ``data/prompts.py``), and the left <-> right swap of a
horizontally mirrored image's text and side map (training flips, ``flip_pair`` text vectors, side-
contrasted queries). What a side *means* for a finding (boxes, negation, union) stays in
``data/laterality.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

LEFT, RIGHT, BILATERAL = "left", "right", "bilateral"
SIDES = (LEFT, RIGHT, BILATERAL)
OPPOSITE = {LEFT: RIGHT, RIGHT: LEFT}

# Report wording -> side, for lower-case text with hyphens read as spaces. Bilateral comes first:
# "left and right" is one bilateral mention, not a left and a right one.
SIDE_TERMS = {
    BILATERAL: r"bilateral(?:ly)?|bibasilar|bibasal(?:ly)?|biapical|(?:left|right) and (?:left|right)"
               r"|(?:left|right) (?:greater|more|larger|worse) than (?:left|right)"
               r"|both (?:lungs?|lung (?:bases|apices|fields)|bases|sides|hemithora(?:x|ces)|apices"
               r"|(?:upper|lower|mid) (?:lobes|lungs|zones)|costophrenic angles)",
    LEFT: r"left(?:ward)?|lingula(?:r)?",
    RIGHT: r"right(?:ward)?|(?<!left )middle lobe",
}
SIDE_PATTERNS = {side: re.compile(rf"\b(?:{pattern})\b") for side, pattern in SIDE_TERMS.items()}

# A query names its side first, as a plain side word, optionally "-sided": "left-sided effusion".
_QUERY_SIDE = re.compile(rf"^({'|'.join(SIDES)})(?:[- ]sided)?\s+(.+)$")

# Words a mirror image swaps: left/right (also "leftward(s)", inside "left-sided") and the
# dextro-/levo- prefixes ("dextroscoliosis"). "bilateral" and abbreviations (RLL, L) are left alone.
_SWAPPED_PREFIXES = {"dextro": "levo", "levo": "dextro"}
_SWAP_WORDS = re.compile(rf"\b({'|'.join(OPPOSITE)})(wards?)?\b|\b({'|'.join(_SWAPPED_PREFIXES)})(?=[a-z])",
                         re.IGNORECASE)
_SWAPPED = {**OPPOSITE, **_SWAPPED_PREFIXES}


def normalise_query(text: str) -> str:
    """A search query as the bank matches it: lower case, single spaces, no final punctuation."""
    return re.sub(r"\s+", " ", text.strip().lower().rstrip(".!?")).strip()


def split_query_side(query: str) -> tuple[str | None, str]:
    """(side named at the start or None, the rest), normalised: "Left-sided effusion." -> (left, effusion)."""
    text = normalise_query(query)
    m = _QUERY_SIDE.match(text)
    return (m.group(1), m.group(2)) if m else (None, text)


def mentions_side(sentence: str) -> bool:
    """Does the sentence name a side (left, right, bilateral, bibasilar, both lungs, ...)?"""
    norm = re.sub(r"[ \t]+", " ", sentence.lower().replace("-", " "))
    return any(p.search(norm) for p in SIDE_PATTERNS.values())


def _same_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word.capitalize() if like[0].isupper() else word


def swap_sides(text: str) -> str:
    """The text of the horizontally mirrored image: left <-> right (also in "left-sided", "leftward",
    "dextro-/levoscoliosis"), case kept; "bilateral" and abbreviations ("RLL", "L") are left alone."""

    def swap(m: re.Match) -> str:
        word = m.group(1) or m.group(3)
        return _same_case(_SWAPPED[word.lower()], word) + (m.group(2) or "")

    return _SWAP_WORDS.sub(swap, text)


def flip_sides(sides: Mapping[str, str]) -> dict[str, str]:
    """The side map of the horizontally mirrored image: left <-> right, bilateral unchanged."""
    return {label: OPPOSITE.get(side, side) for label, side in sides.items()}
