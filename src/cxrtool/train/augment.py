"""Train-time augmentation on [0, 1] grayscale tensors, before the card's normalisation.

CXR-CLIP's recipe for radiographs (random resized crop, CLAHE, brightness/contrast jitter) plus
small rotations. No horizontal flip here: a flipped chest film swaps left and right findings (and
the heart side), so flipping lives in the dataset, where the text's sides are swapped with it.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from cxrtool.model.card import ImageSpec


def random_resized_crop(
    x: torch.Tensor, size: int, rng: random.Random,
    scale: tuple[float, float] = (0.7, 1.0), ratio: tuple[float, float] = (0.85, 1.15),
) -> torch.Tensor:
    """1x1xHxW -> 1x1xSxS: a random crop of ``scale`` x area, resized (torchvision's rule)."""
    h, w = x.shape[-2:]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
            x = x[..., top : top + ch, left : left + cw]
            break
    else:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top : top + s, left : left + s]
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def random_affine(x: torch.Tensor, rng: random.Random, degrees: float = 8.0, translate: float = 0.04) -> torch.Tensor:
    """Small rotation and shift (patient positioning varies); borders filled with black."""
    angle = math.radians(rng.uniform(-degrees, degrees))
    tx, ty = rng.uniform(-translate, translate) * 2, rng.uniform(-translate, translate) * 2
    theta = torch.tensor([[math.cos(angle), -math.sin(angle), tx], [math.sin(angle), math.cos(angle), ty]],
                         dtype=x.dtype)[None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_intensity(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Brightness, contrast and gamma jitter: exposure and post-processing differ by site."""
    x = x.clamp(0, 1) ** math.exp(rng.uniform(-0.3, 0.3))
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-0.08, 0.08)
    return x.clamp(0, 1)


def clahe(x: torch.Tensor, clip_limit: float = 4.0, tiles: int = 8, bins: int = 256) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation of a 1x1xHxW [0, 1] image (OpenCV's rule).

    Per tile: a histogram clipped at ``clip_limit`` x the mean bin count, the excess spread evenly,
    its CDF as a lookup table; each pixel blends the tables of the four nearest tile centres.
    """
    h, w = x.shape[-2:]
    th, tw = -(-h // tiles), -(-w // tiles)
    q = (x[0, 0].clamp(0, 1) * (bins - 1)).round().long()
    padded = F.pad(q[None, None].float(), (0, tw * tiles - w, 0, th * tiles - h), mode="replicate")[0, 0].long()
    blocks = padded.view(tiles, th, tiles, tw).permute(0, 2, 1, 3).reshape(tiles * tiles, th * tw)
    hist = torch.zeros(tiles * tiles, bins).scatter_add_(1, blocks, torch.ones_like(blocks, dtype=torch.float32))
    limit = max(1.0, clip_limit * th * tw / bins)
    excess = (hist - limit).clamp(min=0).sum(1, keepdim=True)
    hist = hist.clamp(max=limit) + excess / bins
    lut = (hist.cumsum(1) / (th * tw)).clamp(0, 1).view(tiles, tiles, bins)
    # tile-centre coordinates of every pixel, clamped at the borders
    fy = ((torch.arange(h, dtype=torch.float32) + 0.5) / th - 0.5).clamp(0, tiles - 1)
    fx = ((torch.arange(w, dtype=torch.float32) + 0.5) / tw - 0.5).clamp(0, tiles - 1)
    y0, x0 = fy.floor().long(), fx.floor().long()
    y1, x1 = (y0 + 1).clamp(max=tiles - 1), (x0 + 1).clamp(max=tiles - 1)
    wy, wx = (fy - y0)[:, None], (fx - x0)[None, :]

    def at(ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
        return lut[ty[:, None], tx[None, :], q]

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return (top * (1 - wy) + bottom * wy)[None, None].to(x.dtype)


def train_view(pixels: torch.Tensor, spec: ImageSpec, rng: random.Random, clahe_p: float = 0.5,
               crop_scale: tuple[float, float] = (0.7, 1.0)) -> torch.Tensor:
    """HxW [0, 1] -> 1x1xSxS augmented, still in [0, 1]."""
    x = pixels[None, None].float()
    x = random_resized_crop(x, spec.input_size, rng, scale=crop_scale)
    if rng.random() < clahe_p:
        x = clahe(x)
    if rng.random() < 0.7:
        x = random_affine(x, rng)
    return random_intensity(x, rng)
