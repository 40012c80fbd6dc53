"""Zero-shot classification from prompt sets (CXR-CLIP / CheXzero protocols, REFERENCE.md §1-§2).

Binary, per label: the label's positive and negative sentences are each encoded, averaged in
embedding space and re-normalised (a prompt ensemble), and an image's probability is the softmax
over ``scale * [cos(img, negative), cos(img, positive)]`` with the model's own logit scale.
A label without negative sentences (the bank's "No Finding") is *not* negated by prefixing "no"
(CheXzero's "no No Finding" bug): its negative set is the positive sentences of every other label.

Multi-class (5x200 style): the mean cosine between an image and each class's prompts, argmax.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrtool.data.prompts import PromptBank
from cxrtool.errors import ManifestError
from cxrtool.model.dual import DualEncoder


@dataclass(frozen=True)
class LabelPromptSet:
    """The sentences that stand for a label being present and absent."""

    label: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def read_prompt_file(path: str | Path) -> dict[str, dict[str, list[str]]]:
    """User prompts: ``{"labels": {name: {"positive": [...], "negative": [...]}}}`` (the prompt bank's
    shape) or the inner mapping alone."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable prompts JSON ({exc})",
                            'expected {"labels": {"Edema": {"positive": [...], "negative": [...]}}}') from None
    labels = data.get("labels", data) if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not all(isinstance(v, dict) and v.get("positive") for v in labels.values()):
        raise ManifestError(f"{path}: every label needs a non-empty 'positive' list",
                            'expected {"labels": {"Edema": {"positive": [...], "negative": [...]}}}')
    return {k: v for k, v in labels.items() if not k.startswith("_")}


def label_prompt_sets(labels: Sequence[str] | None = None, bank: PromptBank | None = None,
                      custom: dict[str, dict[str, list[str]]] | None = None) -> list[LabelPromptSet]:
    """Prompt sets for ``labels`` (default: the custom file's labels, else every bank label).

    Custom sentences win over the bank's; names go through the bank's synonyms ('effusion' ->
    'Pleural Effusion'). A label with no negatives gets the other labels' positives (see module doc).
    """
    bank = bank or PromptBank.load()
    custom = custom or {}
    names = list(labels) if labels else list(custom) or list(bank.labels)
    sets = []
    for name in names:
        given = custom.get(name) or custom.get(bank.canonical(name))
        canonical = name if given else bank.canonical(name)
        if given:
            positive, negative = list(given["positive"]), list(given.get("negative", []))
        else:
            p = bank.prompts(canonical)
            positive, negative = list(p.positive), list(p.negative)
        if not negative:
            negative = [s for other, p in bank.labels.items() if other != canonical for s in p.positive]
        sets.append(LabelPromptSet(canonical, tuple(positive), tuple(negative)))
    return sets


def ensemble_embedding(model: DualEncoder, sentences: Sequence[str]) -> np.ndarray:
    """Mean of the sentences' unit vectors, re-normalised: one vector for a prompt set."""
    return _unit(model.encode_texts(list(sentences)).mean(axis=0))


class ZeroShotClassifier:
    """Per-label P(present) for image vectors, from positive/negative prompt-set embeddings."""

    def __init__(self, labels: Sequence[str], positive: np.ndarray, negative: np.ndarray, scale: float) -> None:
        self.labels = list(labels)
        self.positive = _unit(np.asarray(positive, dtype=np.float32))
        self.negative = _unit(np.asarray(negative, dtype=np.float32))
        self.scale = float(scale)

    @classmethod
    def from_prompts(cls, model: DualEncoder, sets: Sequence[LabelPromptSet]) -> ZeroShotClassifier:
        pos = np.stack([ensemble_embedding(model, s.positive) for s in sets])
        neg = np.stack([ensemble_embedding(model, s.negative) for s in sets])
        return cls([s.label for s in sets], pos, neg, float(model.scale().detach()))

    def logits(self, image_vectors: np.ndarray) -> np.ndarray:
        """N x L x 2 scaled cosines: [..., 0] negative set, [..., 1] positive set."""
        v = np.asarray(image_vectors, dtype=np.float32)
        return self.scale * np.stack([v @ self.negative.T, v @ self.positive.T], axis=-1)

    def probabilities(self, image_vectors: np.ndarray) -> np.ndarray:
        """N x L softmax probability of the positive prompt set (a sigmoid of the scaled difference)."""
        z = self.logits(image_vectors).astype(np.float64)
        return 1.0 / (1.0 + np.exp(-(z[..., 1] - z[..., 0])))


def multiclass_scores(image_vectors: np.ndarray, class_prompt_vectors: Sequence[np.ndarray]) -> np.ndarray:
    """N x C mean cosine of each image to each class's prompts (CXR-CLIP's 5x200 rule; argmax = prediction)."""
    v = np.asarray(image_vectors, dtype=np.float32)
    return np.stack([(v @ np.asarray(t, dtype=np.float32).T).mean(axis=1) for t in class_prompt_vectors], axis=1)
