"""Labels -> report-like text with a prompt bank (CXR-CLIP's scheme, bank kept as JSON data).

Training draws one random sentence per label (positives, uncertain, and up to ``max_negatives``
sampled negatives), shuffles and joins them; every call is a fresh draw, so two calls give the
two texts of a study. Evaluation is deterministic: the first positive sentence of each positive
label, "No Finding" if there are none.

Sides (``sides={label: left|right|bilateral}``, the manifest's ``sides``): a label with ``sided``
templates in the bank gets a lateralised sentence when its side is known ("small left pleural
effusion."), a bilateral one for ``bilateral``, and, when the side is unknown, only its sentences
that name no side, so that no side is ever guessed. Labels without templates read as before.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cxrtool.data.manifest import merge_label
from cxrtool.data.sides import BILATERAL, LEFT, RIGHT, mentions_side, split_query_side
from cxrtool.errors import ManifestError

BANK_PATH = Path(__file__).with_name("prompt_bank.json")
NO_FINDING = "No Finding"


SIDE_SLOT = "{side}"


@dataclass
class LabelPrompts:
    """A label's sentences. ``positive``/``uncertain`` are side-agnostic (any side counts);
    ``sided``/``sided_uncertain`` are templates with a ``{side}`` slot, ``bilateral`` whole sentences."""

    positive: list[str]
    negative: list[str]
    uncertain: list[str]
    sided: list[str] = field(default_factory=list)
    sided_uncertain: list[str] = field(default_factory=list)
    bilateral: list[str] = field(default_factory=list)

    @property
    def lateral(self) -> bool:
        return bool(self.sided)

    def positive_for(self, side: str | None) -> list[str]:
        """Positive sentences for a known side, else (for a lateral label) the ones naming no side."""
        return self._for(side, self.positive, self.sided, self.bilateral)

    def uncertain_for(self, side: str | None) -> list[str]:
        """Uncertain sentences for a known side, else (for a lateral label) the ones naming no side."""
        return self._for(side, self.uncertain, self.sided_uncertain, [])

    def _for(self, side: str | None, agnostic: list[str], templates: list[str], bilateral: list[str]) -> list[str]:
        if not self.lateral:
            return agnostic
        if side in (LEFT, RIGHT) and templates:
            return [t.replace(SIDE_SLOT, side) for t in templates]
        if side == BILATERAL and bilateral:
            return bilateral
        return [s for s in agnostic if not mentions_side(s)]


class PromptBank:
    """Sentences per canonical label, plus a synonym table for dataset column names."""

    def __init__(self, labels: dict[str, LabelPrompts], synonyms: dict[str, str]) -> None:
        self.labels = labels
        self._lookup = {k.lower(): k for k in labels}
        self._lookup.update({k.lower(): v for k, v in synonyms.items()})

    @classmethod
    def load(cls, path: str | Path | None = None) -> PromptBank:
        return _load_bank(str(path or BANK_PATH))

    def canonical(self, label: str) -> str:
        """Map a dataset's label/column name to the bank's label ('effusion' -> 'Pleural Effusion')."""
        key = label.strip().lower()
        if key in self._lookup:
            return self._lookup[key]
        key = key.replace("-", " ").replace("_", " ")
        return self._lookup.get(key, label.strip().replace("_", " ").title())

    def prompts(self, label: str) -> LabelPrompts:
        """Sentences for a label; labels the bank lacks get neutral generic templates."""
        name = self.canonical(label)
        if name in self.labels:
            return self.labels[name]
        low = name.lower()
        return LabelPrompts([f"there is {low}.", f"findings of {low}."],
                            [f"there is no evidence of {low}."], [f"possible {low}."])

    def query_side(self, query: str) -> str | None:
        """The side a search query names at its start ("left pleural effusion" -> left), else None."""
        return split_query_side(query)[0]

    def expand_query(self, query: str) -> list[str] | None:
        """A search query that *names* a finding -> the query plus the bank's sentences for it.

        "cardiomegaly", "pleural effusion", "left pleural effusion", "right-sided pneumothorax":
        search then uses the ensemble of how the finding is phrased (CXR-CLIP's prompt ensembles),
        which ranks far better than one or two words through a sentence encoder. The side is kept
        (sided sentences only). Any other text (a sentence, a description) -> None: used as typed.
        """
        side, name = self.query_finding(query)
        if name is None:
            return None
        return [query.strip(), *self.labels[name].positive_for(side)]

    def query_finding(self, query: str) -> tuple[str | None, str | None]:
        """(side, label) when ``query`` *names* a finding of the bank, side and all ("left pleural
        effusions" -> (left, Pleural Effusion)); (side, None) for any other text, or for a side
        named with a finding that has no sides."""
        side, text = split_query_side(query)
        for candidate in (text, text[:-1] if text.endswith("s") else None):
            if candidate and candidate in self._lookup:
                name = self._lookup[candidate]
                if name == NO_FINDING or name not in self.labels or (side and not self.labels[name].lateral):
                    return side, None
                return side, name
        return side, None

    def to_text(self, labels: dict[str, int], rng: random.Random | None = None, max_negatives: int = 3,
                sides: dict[str, str] | None = None) -> str:
        """Label dict (1 positive, 0 negative, -1 uncertain) -> text; random if ``rng`` is given.

        ``sides`` (label -> left/right/bilateral) lateralises the sentences of labels that have a side.
        """
        canon: dict[str, int] = {}
        for label, value in labels.items():  # two columns may name one label: 1 > -1 > 0
            name = self.canonical(label)
            canon[name] = merge_label(canon.get(name), value)
        side = {self.canonical(k): v for k, v in (sides or {}).items()}
        positives = [k for k, v in canon.items() if v == 1 and k != NO_FINDING]
        uncertain = [k for k, v in canon.items() if v == -1 and k != NO_FINDING]
        negatives = [k for k, v in canon.items() if v == 0 and k != NO_FINDING]
        if rng is None:
            if not positives:
                return self.prompts(NO_FINDING).positive[0]
            return " ".join(self.prompts(k).positive_for(side.get(k))[0] for k in sorted(positives))
        sentences = [rng.choice(self.prompts(k).positive_for(side.get(k))) for k in positives]
        for k in uncertain:
            p = self.prompts(k)
            sentences.append(rng.choice(p.uncertain_for(side.get(k)) or p.positive_for(side.get(k))))
        if not positives and not uncertain:
            sentences.append(rng.choice(self.prompts(NO_FINDING).positive))
        rng.shuffle(negatives)
        for k in negatives[:max_negatives]:
            p = self.prompts(k)
            if p.negative:
                sentences.append(rng.choice(p.negative))
        rng.shuffle(sentences)
        return " ".join(sentences)


@lru_cache(maxsize=8)
def _load_bank(path: str) -> PromptBank:
    data = json.loads(Path(path).read_text())
    labels = {}
    for name, v in data["labels"].items():
        sided = v.get("sided", {})
        bad = [t for t in sided.get("positive", []) + sided.get("uncertain", []) if SIDE_SLOT not in t]
        if bad:
            raise ManifestError(f"{path}: {name!r} sided template {bad[0]!r} has no {SIDE_SLOT} slot",
                                "write the side as {side}; whole bilateral sentences go under 'bilateral'")
        labels[name] = LabelPrompts(list(v.get("positive", [])), list(v.get("negative", [])),
                                    list(v.get("uncertain", [])), list(sided.get("positive", [])),
                                    list(sided.get("uncertain", [])), list(sided.get("bilateral", [])))
    return PromptBank(labels, data.get("synonyms", {}))
