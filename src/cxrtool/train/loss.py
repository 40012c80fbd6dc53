"""Contrastive losses: CLIP, plus CXR-CLIP's image-image (ICL) and text-text (TCL) terms.

The formulas are CXR-CLIP's (REFERENCE.md §1). Each study brings two images (I1, I2) and two
texts (T1, T2); with s = exp(logit_scale) and unit-norm features,

- CLIP: image→text and text→image cross-entropy, each averaged over the four (I, T) pairs;
  L_clip = ½(L_i2t + L_t2i);
- ICL: ½[CE(s·I1·I2ᵀ) + CE(s·I2·I1ᵀ)];  TCL: ½[CE(s·T1·T2ᵀ) + CE(s·T2·T1ᵀ)];
- total = L_clip + w_icl·L_ICL + w_tcl·L_TCL.

Under ``torchrun`` every rank computes its *local* rows against the features of *all* ranks
(gathered with gradient, open_clip's ``--local-loss --gather-with-grad``): the mean over ranks
equals the single-process loss on the whole batch, and after DDP averages gradients so do they.

Beyond the reference, two options:

- **false negatives** (``keys``): each study carries the hashes of what its texts *mean* (the
  text itself for reports; the label set for prompt-converted studies). Two studies sharing a
  key are not negatives of each other, so that pair is removed from the softmax denominators of
  the CLIP and TCL terms. (ICL is instance discrimination between images and is left as is.)
- **hard negatives** (``extra_texts``): additional text features that are negatives for every
  image (e.g. a study's text with left and right swapped), appended to the image→text logits
  unless their key belongs to the row's own study. With ``extra_rows`` (which local study each
  one was made from) there is also a focused **side term**: for each such study, both views
  choose between its own text and the side-swapped one (a two-way cross-entropy), weighted by
  ``side_weight``. Among a whole batch of negatives one near-duplicate text barely moves the
  loss; the side term makes "left" versus "right" the whole question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass
class LossTerms:
    total: torch.Tensor
    clip: torch.Tensor
    icl: torch.Tensor
    tcl: torch.Tensor
    side: torch.Tensor | None = None

    def floats(self) -> dict[str, float]:
        out = {k: float(getattr(self, k).detach()) for k in ("total", "clip", "icl", "tcl")}
        out["side"] = float(self.side.detach()) if self.side is not None else 0.0
        return out


def _world(distributed: bool = True) -> tuple[int, int]:
    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient and returns this rank's rows.

    Uses only all_gather/all_reduce, so it works on gloo (CPU) as well as NCCL.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank; gradients flow back to the rank that owns each row."""
    rank, world = _world()
    if world == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a (non-differentiable) tensor, e.g. keys, from every rank."""
    rank, world = _world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def gather_ragged(x: torch.Tensor, with_grad: bool) -> torch.Tensor:
    """Gather tensors whose first dimension differs by rank (padded to the longest, then cut)."""
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = gather_no_grad(size).tolist()
    longest = max(sizes)
    padded = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))]) if x.shape[0] < longest else x
    parts = (gather_with_grad if with_grad else gather_no_grad)(padded).split(longest)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


def _ce(rows: torch.Tensor, cols: torch.Tensor, scale: torch.Tensor, offset: int,
        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean CE of each local row against all columns; row i's positive is column offset + i.

    ``mask[i, j]`` True removes column j from row i's negatives (never its positive).
    """
    logits = scale * rows @ cols.t()
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    target = torch.arange(rows.shape[0], device=rows.device) + offset
    return F.cross_entropy(logits, target)


def false_negative_mask(row_keys: torch.Tensor, col_keys: torch.Tensor, offset: int) -> torch.Tensor:
    """n x N: True where local study i and study j share a key (j != i's own column).

    ``row_keys`` is n x K (each study's key set), ``col_keys`` is N x K.
    """
    shared = (row_keys[:, :, None, None] == col_keys[None, None, :, :]).any(-1).any(1)
    own = torch.arange(row_keys.shape[0], device=row_keys.device) + offset
    shared[torch.arange(row_keys.shape[0], device=row_keys.device), own] = False
    return shared


def cxr_clip_loss(
    img1: torch.Tensor, img2: torch.Tensor, txt1: torch.Tensor, txt2: torch.Tensor, scale: torch.Tensor,
    icl_weight: float = 1.0, tcl_weight: float = 0.5, keys: torch.Tensor | None = None,
    extra_texts: torch.Tensor | None = None, extra_keys: torch.Tensor | None = None, distributed: bool = True,
    extra_rows: torch.Tensor | None = None, side_weight: float = 0.0,
) -> LossTerms:
    """CXR-CLIP's objective on this rank's studies (n x D features each; see module docstring).

    ``keys`` (n x K int64) turns on false-negative removal; ``extra_texts`` (m x D, with
    ``extra_keys`` m) adds image→text hard negatives. ``distributed=False`` keeps a torchrun
    process to its own rows (validation on one rank).
    """
    rank, world = _world(distributed)
    n = img1.shape[0]
    offset = rank * n
    side = None
    if extra_rows is not None and side_weight and extra_texts is not None and extra_texts.shape[0]:
        side = side_term(img1, img2, txt1, extra_texts, extra_rows, scale)

    def gather(x: torch.Tensor) -> torch.Tensor:
        return gather_with_grad(x) if world > 1 else x

    def gather_keys(x: torch.Tensor) -> torch.Tensor:
        return gather_no_grad(x) if world > 1 else x

    all_i1, all_i2, all_t1, all_t2 = gather(img1), gather(img2), gather(txt1), gather(txt2)
    mask = None
    if keys is not None:
        mask = false_negative_mask(keys, gather_keys(keys), offset)
    extra_mask = None
    if extra_texts is not None and (world > 1 or extra_texts.shape[0]):
        # every rank must join the gather, even with no hard negatives of its own
        if world > 1:
            extra_texts, extra_keys = gather_ragged(extra_texts, True), gather_ragged(extra_keys, False)
        own = keys if keys is not None else torch.full((n, 1), -1, dtype=torch.int64, device=img1.device)
        extra_mask = (own[:, :, None] == extra_keys[None, None, :]).any(1)
        if not extra_texts.shape[0]:
            extra_texts = None
    else:
        extra_texts = None

    def i2t(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        cols, m = texts, mask
        if extra_texts is not None:
            cols = torch.cat([texts, extra_texts])
            base = mask if mask is not None else torch.zeros(n, texts.shape[0], dtype=torch.bool, device=texts.device)
            m = torch.cat([base, extra_mask], dim=1)
        return _ce(images, cols, scale, offset, m)

    l_i2t = (i2t(img1, all_t1) + i2t(img2, all_t1) + i2t(img1, all_t2) + i2t(img2, all_t2)) / 4
    l_t2i = (_ce(txt1, all_i1, scale, offset, mask) + _ce(txt1, all_i2, scale, offset, mask)
             + _ce(txt2, all_i1, scale, offset, mask) + _ce(txt2, all_i2, scale, offset, mask)) / 4
    clip = 0.5 * (l_i2t + l_t2i)
    icl = 0.5 * (_ce(img1, all_i2, scale, offset) + _ce(img2, all_i1, scale, offset))
    tcl = 0.5 * (_ce(txt1, all_t2, scale, offset, mask) + _ce(txt2, all_t1, scale, offset, mask))
    total = clip + icl_weight * icl + tcl_weight * tcl
    if side is not None:
        total = total + side_weight * side
    return LossTerms(total, clip, icl, tcl, side)


def side_term(img1: torch.Tensor, img2: torch.Tensor, txt1: torch.Tensor, swapped: torch.Tensor,
              rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean two-way CE: each view of study ``rows[e]`` picks its text over ``swapped[e]``."""
    own, other = txt1[rows], swapped
    losses = []
    for images in (img1[rows], img2[rows]):
        logits = scale * torch.stack([(images * own).sum(-1), (images * other).sum(-1)], dim=1)
        losses.append(F.cross_entropy(logits, torch.zeros(len(rows), dtype=torch.long, device=logits.device)))
    return (losses[0] + losses[1]) / 2


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
              keys: torch.Tensor | None = None) -> torch.Tensor:
    """Plain symmetric CLIP loss on one (image, text) pair set (single process; evaluation, benchmarks)."""
    mask = false_negative_mask(keys, keys, 0) if keys is not None else None
    return 0.5 * (_ce(image, text, scale, 0, mask) + _ce(text, image, scale, 0, mask))


def text_keys(texts: Sequence[str]) -> list[int]:
    """Stable 63-bit hashes of normalised texts (the same on every rank and every run)."""
    import xxhash

    return [xxhash.xxh64_intdigest(" ".join(t.lower().split()).encode()) >> 1 for t in texts]
