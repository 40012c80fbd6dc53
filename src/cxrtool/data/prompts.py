"""Labels -> report-like text with a prompt bank (CXR-CLIP's scheme, bank kept as JSON data).

Training draws one random sentence per label (positives, uncertain, and up to ``max_negatives``
sampled negatives), shuffles and joins them; every call is a fresh draw, so two calls give the
two texts of a study. Evaluation is deterministic: the first positive sentence of each positive
label, "No Finding" if there are none.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cxrtool.data.manifest import merge_label

BANK_PATH = Path(__file__).with_name("prompt_bank.json")
NO_FINDING = "No Finding"


@dataclass
class LabelPrompts:
    positive: list[str]
    negative: list[str]
    uncertain: list[str]


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

    def to_text(self, labels: dict[str, int], rng: random.Random | None = None, max_negatives: int = 3) -> str:
        """Label dict (1 positive, 0 negative, -1 uncertain) -> text; random if ``rng`` is given."""
        canon: dict[str, int] = {}
        for label, value in labels.items():  # two columns may name one label: 1 > -1 > 0
            name = self.canonical(label)
            canon[name] = merge_label(canon.get(name), value)
        positives = [k for k, v in canon.items() if v == 1 and k != NO_FINDING]
        uncertain = [k for k, v in canon.items() if v == -1 and k != NO_FINDING]
        negatives = [k for k, v in canon.items() if v == 0 and k != NO_FINDING]
        if rng is None:
            if not positives:
                return self.prompts(NO_FINDING).positive[0]
            return " ".join(self.prompts(k).positive[0] for k in sorted(positives))
        sentences = [rng.choice(self.prompts(k).positive) for k in positives]
        for k in uncertain:
            p = self.prompts(k)
            sentences.append(rng.choice(p.uncertain or p.positive))
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
    labels = {
        name: LabelPrompts(list(v.get("positive", [])), list(v.get("negative", [])), list(v.get("uncertain", [])))
        for name, v in data["labels"].items()
    }
    return PromptBank(labels, data.get("synonyms", {}))
