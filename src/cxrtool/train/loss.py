"""Contrastive losses.

``clip_loss`` is CLIP's symmetric cross-entropy, with one change that matters for label-derived
text: pairs whose texts are identical (two "the lungs are clear." studies in one batch) are all
positives of each other, instead of being pushed apart as false negatives. With all-distinct
texts it is exactly CLIP's loss. ``label_match_targets`` goes one step further for label-derived
text: studies sharing findings are partial positives.
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


def label_match_targets(labels: Sequence[dict[str, int]], device: torch.device | None = None) -> torch.Tensor:
    """NxN row-stochastic targets from label overlap (MedCLIP's semantic matching idea).

    Two label-only studies that share findings are partial positives of each other, in
    proportion to the cosine of their positive-label vectors (uncertain counts half; no
    positives = "No Finding"). Identical label sets give the same targets as identical texts.
    """
    names = sorted({k for d in labels for k, v in d.items() if v != 0} | {"No Finding"})
    index = {n: i for i, n in enumerate(names)}
    vec = torch.zeros(len(labels), len(names))
    for row, d in enumerate(labels):
        for k, v in d.items():
            if v == 1 or v == -1:
                vec[row, index[k]] = 1.0 if v == 1 else 0.5
        if vec[row].sum() == 0:
            vec[row, index["No Finding"]] = 1.0
    vec = torch.nn.functional.normalize(vec, dim=1)
    sim = (vec @ vec.t()).clamp(min=0)
    sim.fill_diagonal_(1.0)
    return (sim / sim.sum(1, keepdim=True)).to(device)


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
              targets: torch.Tensor | None = None) -> torch.Tensor:
    """½(CE(image->text) + CE(text->image)) over unit-norm NxD features."""
    logits = scale * image @ text.t()
    if targets is None:
        labels = torch.arange(image.shape[0], device=image.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets.t()))
