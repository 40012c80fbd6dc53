"""Zero-shot classification from prompt sets (CXR-CLIP / CheXzero protocols, REFERENCE.md §1-§2).

The scoring rule is the model's own (``card.scoring.rule``), after the loss it was trained with:

* ``softmax`` (CLIP, InfoNCE). Binary, per label: the label's positive and negative sentences are
  each encoded, averaged in embedding space and re-normalised (a prompt ensemble), and an image's
  probability is the softmax over ``scale * [cos(img, negative), cos(img, positive)]`` with the
  model's own logit scale. A label without negative sentences (the bank's "No Finding") is *not*
  negated by prefixing "no" (CheXzero's "no No Finding" bug): its negative set is the positive
  sentences of every other label.
* ``sigmoid`` (SigLIP). Each image-text pair was trained as its own yes/no question, so each
  positive prompt gives ``sigmoid(scale * cos + bias)`` and the label's probability is their mean.
  The negative sentences take no part: a softmax against them would cancel the learnt bias.

Multi-class (5x200 style): the mean score of an image to each class's prompts, argmax: mean
cosine under softmax scoring (CXR-CLIP's rule), mean per-prompt sigmoid under sigmoid scoring.
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
    return model.encode_ensemble(sentences)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


@dataclass(frozen=True)
class Scoring:
    """A model's zero-shot rule and the numbers it needs (see module docstring)."""

    rule: str = "softmax"
    scale: float = 1.0
    bias: float = 0.0

    @classmethod
    def of(cls, model: DualEncoder) -> Scoring:
        return cls(model.card.scoring.rule, float(model.scale().detach()), float(model.bias().detach()))


class ZeroShotClassifier:
    """Per-label P(present) for image vectors, from positive/negative prompt-set embeddings.

    Under sigmoid scoring ``positive_prompts`` holds each label's individual positive prompt
    vectors (P_i x D); without them the ensemble vector stands in as a single prompt.
    """

    def __init__(self, labels: Sequence[str], positive: np.ndarray, negative: np.ndarray, scale: float,
                 rule: str = "softmax", bias: float = 0.0,
                 positive_prompts: Sequence[np.ndarray] | None = None) -> None:
        self.labels = list(labels)
        self.positive = _unit(np.asarray(positive, dtype=np.float32))
        self.negative = _unit(np.asarray(negative, dtype=np.float32))
        self.scale = float(scale)
        self.rule = rule
        self.bias = float(bias)
        self.positive_prompts = ([_unit(np.asarray(p, dtype=np.float32)) for p in positive_prompts]
                                 if positive_prompts is not None else [p[None] for p in self.positive])

    @classmethod
    def from_prompts(cls, model: DualEncoder, sets: Sequence[LabelPromptSet]) -> ZeroShotClassifier:
        scoring = Scoring.of(model)
        prompts = [model.encode_texts(list(s.positive)) for s in sets]
        pos = np.stack([_unit(p.mean(axis=0)) for p in prompts])
        neg = np.stack([ensemble_embedding(model, s.negative) for s in sets])
        return cls([s.label for s in sets], pos, neg, scoring.scale, scoring.rule, scoring.bias, prompts)

    def logits(self, image_vectors: np.ndarray) -> np.ndarray:
        """N x L x 2 scaled cosines: [..., 0] negative set, [..., 1] positive set."""
        v = np.asarray(image_vectors, dtype=np.float32)
        return self.scale * np.stack([v @ self.negative.T, v @ self.positive.T], axis=-1)

    def probabilities(self, image_vectors: np.ndarray) -> np.ndarray:
        """N x L probability of each label: softmax of the positive set against the negative one,
        or the mean per-prompt sigmoid (see module docstring)."""
        if self.rule == "sigmoid":
            v = np.asarray(image_vectors, dtype=np.float32)
            return np.stack([_sigmoid(self.scale * (v @ p.T) + self.bias).mean(axis=1) for p in self.positive_prompts],
                            axis=1)
        z = self.logits(image_vectors).astype(np.float64)
        return _sigmoid(z[..., 1] - z[..., 0])


def multiclass_scores(image_vectors: np.ndarray, class_prompt_vectors: Sequence[np.ndarray],
                      scoring: Scoring | None = None) -> np.ndarray:
    """N x C mean score of each image to each class's prompts, argmax = prediction: mean cosine
    (CXR-CLIP's 5x200 rule), or mean per-prompt sigmoid for sigmoid-scored models."""
    v = np.asarray(image_vectors, dtype=np.float32)
    cos = [v @ np.asarray(t, dtype=np.float32).T for t in class_prompt_vectors]
    if scoring is not None and scoring.rule == "sigmoid":
        return np.stack([_sigmoid(scoring.scale * c + scoring.bias).mean(axis=1) for c in cos], axis=1)
    return np.stack([c.mean(axis=1) for c in cos], axis=1)
