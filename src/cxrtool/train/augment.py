"""Train-time augmentation on [0, 1] grayscale tensors, before the card's normalisation.

No horizontal flips: a flipped chest film swaps left and right findings (and the heart side).
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


def train_view(pixels: torch.Tensor, spec: ImageSpec, rng: random.Random) -> torch.Tensor:
    """HxW [0, 1] -> 1x1xSxS augmented, still in [0, 1]."""
    x = pixels[None, None].float()
    x = random_resized_crop(x, spec.input_size, rng)
    if rng.random() < 0.7:
        x = random_affine(x, rng)
    return random_intensity(x, rng)
