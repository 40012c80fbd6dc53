"""Contrastive losses.

``clip_loss`` is CLIP's symmetric cross-entropy, with one change that matters for label-derived
text: pairs whose texts are identical (two "the lungs are clear." studies in one batch) are all
positives of each other, instead of being pushed apart as false negatives. With all-distinct
texts it is exactly CLIP's loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def text_match_targets(texts: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
    """NxN row-stochastic targets: uniform over the entries whose text equals row i's text."""
    ids: dict[str, int] = {}
    codes = torch.tensor([ids.setdefault(t, len(ids)) for t in texts], device=device)
    same = (codes[:, None] == codes[None, :]).float()
    return same / same.sum(1, keepdim=True)


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
              targets: torch.Tensor | None = None) -> torch.Tensor:
    """½(CE(image->text) + CE(text->image)) over unit-norm NxD features."""
    logits = scale * image @ text.t()
    if targets is None:
        labels = torch.arange(image.shape[0], device=image.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets.t()))
