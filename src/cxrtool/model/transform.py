"""Image preprocessing defined by the model card: [0, 1] grayscale -> normalised tower input.

Used unchanged by training (after augmentation), embedding and search-by-image, so a model sees
the same geometry and intensities everywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrtool.model.card import ImageSpec


def to_tensor(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """HxW float [0, 1] -> 1x1xHxW float32 tensor."""
    t = torch.as_tensor(pixels, dtype=torch.float32)
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {tuple(t.shape)}")
    return t[None, None]


def resize_to_input(x: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """Apply the card's geometric rule to a 1x1xHxW tensor, giving 1x1xSxS."""
    size = spec.input_size
    h, w = x.shape[-2:]
    mode = spec.interpolation
    kw = {"antialias": True} if mode in ("bilinear", "bicubic") else {}
    if spec.resize == "squash":
        return F.interpolate(x, size=(size, size), mode=mode, **kw)
    if spec.resize == "short_side_center_crop":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode=mode, **kw)
        top, left = (nh - size) // 2, (nw - size) // 2
        return x[..., top : top + size, left : left + size]
    if spec.resize in ("shortest_edge_center_crop", "torchvision_center_crop"):
        # The arithmetic of the processors these models were trained with, to the pixel: the long
        # side is floored (torchvision's Resize(int), HF's get_resize_output_image_size); the crop
        # offset is floored by HF's processors and rounded half to even by torchvision's CenterCrop.
        nh, nw = (int(size * h / w), size) if w <= h else (size, int(size * w / h))
        x = F.interpolate(x, size=(nh, nw), mode=mode, **kw)
        if spec.resize == "shortest_edge_center_crop":
            top, left = int((nh - size) / 2.0), int((nw - size) / 2.0)
        else:
            top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        return x[..., top : top + size, left : left + size]
    # letterbox: whole image, long side = size, padded with black
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode=mode, **kw)
    out = x.new_zeros((*x.shape[:-2], size, size))
    top, left = (size - nh) // 2, (size - nw) // 2
    out[..., top : top + nh, left : left + nw] = x
    return out


def normalize(x: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """Nx1xSxS in [0, 1] -> NxCxSxS normalised (grayscale replicated to C channels)."""
    x = x.clamp(0.0, 1.0).expand(-1, spec.in_channels, -1, -1)
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def preprocess(pixels: np.ndarray | torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """One decoded image -> CxSxS model input (the eval-time transform)."""
    return normalize(resize_to_input(to_tensor(pixels), spec), spec)[0].contiguous()
