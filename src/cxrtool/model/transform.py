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
    if spec.resize == "chexzero_letterbox":
        return _chexzero_letterbox(x, spec)
    # letterbox: whole image, long side = size, padded with black
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode=mode, **kw)
    out = x.new_zeros((*x.shape[:-2], size, size))
    top, left = (size - nh) // 2, (size - nw) // 2
    out[..., top : top + nh, left : left + nw] = x
    return out


def _chexzero_letterbox(x: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """CheXzero's ``data_process.preprocess(img, desired_size=320)`` then its eval ``Resize``.

    Step 1 as Pillow ran it there: long side to ``pad_size`` with the short side floored, LANCZOS
    (its ``Image.ANTIALIAS``), on the 8-bit image CheXzero always had (it read 8-bit PNG/JPEG with
    cv2): Pillow resamples 8-bit images in two passes with the overshoot clipped in between, up to
    4 grey levels away from a float resize at sharp edges, so the image is quantised to 8 bits here
    too. Pasted at ((pad - new) // 2) on black. Step 2 as torchvision 0.11's tensor
    ``Resize(224, BICUBIC)`` ran it: ``interpolate`` without antialias, and no clamp (it ran after
    ``Normalize``, on unbounded values)."""
    from PIL import Image

    pad, (h, w) = spec.pad_size, x.shape[-2:]
    ratio = pad / max(h, w)
    nw, nh = max(1, int(w * ratio)), max(1, int(h * ratio))
    gray8 = np.round(x[0, 0].detach().cpu().numpy().clip(0.0, 1.0) * 255.0).astype(np.uint8)
    small = np.asarray(Image.fromarray(gray8, mode="L").resize((nw, nh), Image.Resampling.LANCZOS),
                       dtype=np.float32) / 255.0
    canvas = np.zeros((pad, pad), dtype=np.float32)
    top, left = (pad - nh) // 2, (pad - nw) // 2
    canvas[top : top + nh, left : left + nw] = small
    out = torch.from_numpy(canvas)[None, None].to(x.device)
    if pad == spec.input_size:
        return out
    return F.interpolate(out, size=(spec.input_size, spec.input_size), mode=spec.interpolation,
                         align_corners=False if spec.interpolation in ("bilinear", "bicubic") else None)


def normalize(x: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """Nx1xSxS in [0, 1] -> NxCxSxS normalised (grayscale replicated to C channels). Values are
    clamped to [0, 1] first (an antialiased resize overshoots), except under chexzero_letterbox,
    whose upstream resized already-normalised values and kept the overshoot."""
    if spec.resize != "chexzero_letterbox":
        x = x.clamp(0.0, 1.0)
    x = x.expand(-1, spec.in_channels, -1, -1)
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def preprocess(pixels: np.ndarray | torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """One decoded image -> CxSxS model input (the eval-time transform)."""
    return normalize(resize_to_input(to_tensor(pixels), spec), spec)[0].contiguous()
