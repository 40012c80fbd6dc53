"""Contrastive loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cxrtool.train.loss import clip_loss, label_match_targets, text_match_targets


def _feats(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_distinct_texts_give_plain_clip_loss():
    img, txt = _feats()
    texts = [f"t{i}" for i in range(6)]
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.t()
    labels = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    assert torch.allclose(clip_loss(img, txt, scale, text_match_targets(texts)), expected)


def test_identical_texts_are_not_negatives_of_each_other():
    targets = text_match_targets(["clear.", "effusion.", "clear."])
    assert torch.allclose(targets[0], torch.tensor([0.5, 0.0, 0.5]))
    base, _ = _feats(2)
    scale = torch.tensor(50.0)

    txt = torch.stack([base[0], base[1], base[0]])
    img = txt.clone()
    # A model mapping both "clear." studies to one point is optimal under duplicate-aware targets:
    # the loss equals the targets' own entropy (KL = 0). Plain CLIP targets call the same model
    # wrong by ln 2 on each duplicated row.
    entropy = float(-(targets * targets.clamp_min(1e-12).log()).sum(1).mean())
    assert abs(float(clip_loss(img, txt, scale, targets)) - entropy) < 1e-4
    assert float(clip_loss(img, txt, scale)) > 0.4


def test_loss_prefers_aligned_pairs():
    img, txt = _feats()
    aligned = clip_loss(img, img.clone(), torch.tensor(10.0))
    random_pairs = clip_loss(img, txt, torch.tensor(10.0))
    assert aligned < random_pairs


def test_label_targets_share_mass_between_studies_with_common_findings():
    t = label_match_targets([{"Cardiomegaly": 1, "Edema": 0}, {"Cardiomegaly": 1, "Edema": 1}, {"Edema": 0}, {}])
    assert torch.allclose(t.sum(1), torch.ones(4))
    assert t[0, 1] > 0 and t[0, 2] == 0  # shared cardiomegaly; nothing shared with a normal study
    assert torch.allclose(t[2], torch.tensor([0.0, 0.0, 0.5, 0.5]))  # two "No Finding" studies
    assert t[0, 0] > t[0, 1]
