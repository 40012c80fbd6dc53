"""Texts -> the vectors a model writes: one rule for every engine that runs a text tower.

A text query needs only this: torch's :class:`~cxrtool.model.dual.DualEncoder`, the ONNX Runtime
text side (:mod:`cxrtool.model.onnx_text`, no torch) and the query-vector cache
(:mod:`cxrtool.model.text_cache`) all supply ``_encode_texts`` (texts -> the tower's unit vectors)
and inherit the rest from here, so a flip-pair or ensemble vector is made the same way whichever
engine made its parts. Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrtool.data.sides import swap_sides
from cxrtool.model.card import ModelCard


def pair_vectors(straight: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """Two NxD unit-vector batches -> Nx2D unit vectors [straight; mirrored] / sqrt(2) (``flip_pair``)."""
    return (np.concatenate([straight, mirrored], axis=-1) / np.float32(np.sqrt(2.0))).astype(np.float32)


class TextSide:
    """``card`` and ``_encode_texts(texts, batch_size)`` -> NxD float32 unit vectors, one per text."""

    card: ModelCard

    def _encode_texts(self, texts: list[str], batch_size: int) -> np.ndarray:
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Strings -> N x ``card.output_dim`` L2-normalised float32 (``flip_pair``: each text beside its
        side-swapped twin)."""
        texts = list(texts)
        straight = self._encode_texts(texts, batch_size)
        if self.card.embedding != "flip_pair":
            return straight
        swapped = [swap_sides(t) for t in texts]
        changed = [i for i, (t, w) in enumerate(zip(texts, swapped, strict=True)) if t != w]
        mirrored = straight.copy()  # a text that names no side is its own mirror: encoded once
        if changed:
            mirrored[changed] = self._encode_texts([swapped[i] for i in changed], batch_size)
        return pair_vectors(straight, mirrored)

    def encode_ensemble(self, sentences: Sequence[str]) -> np.ndarray:
        """One unit vector for a set of sentences: the re-normalised mean of their unit vectors."""
        v = self.encode_texts(list(sentences)).mean(axis=0)
        return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
