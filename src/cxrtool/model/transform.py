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
    if spec.resize in _UPSTREAM_RULES:
        return _UPSTREAM_RULES[spec.resize](x, spec)
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
    small = np.asarray(Image.fromarray(gray8(x), mode="L").resize((nw, nh), Image.Resampling.LANCZOS),
                       dtype=np.float32) / 255.0
    canvas = np.zeros((pad, pad), dtype=np.float32)
    top, left = (pad - nh) // 2, (pad - nw) // 2
    canvas[top : top + nh, left : left + nw] = small
    out = torch.from_numpy(canvas)[None, None].to(x.device)
    if pad == spec.input_size:
        return out
    return F.interpolate(out, size=(spec.input_size, spec.input_size), mode=spec.interpolation,
                         align_corners=False if spec.interpolation in ("bilinear", "bicubic") else None)


def gray8(x: torch.Tensor) -> np.ndarray:
    """1x1xHxW [0, 1] -> HxW uint8, rounded: the 8-bit image the upstream projects read from PNG/JPEG."""
    return np.round(x[0, 0].detach().cpu().numpy().clip(0.0, 1.0) * 255.0).astype(np.uint8)


def _stored_levels(a: np.ndarray) -> np.ndarray:
    """The integer grey levels a decoded [0, 1] image came from (8-bit: v / 255; 9-16 bit PNG:
    v / (2^bits - 1)), as float64, so upstream arithmetic on the file's integers is repeated to the
    bit; values on no such grid (a windowed DICOM) are returned unchanged."""
    for bits in (8, *range(9, 17)):
        d = float(2**bits - 1)
        levels = np.round(a * d)
        if np.abs(a * d - levels).max(initial=0.0) < 0.02:
            return levels
    return a


def _biovil_resize_crop(x: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """hi-ml-multimodal's inference transform (``get_image_inference``): ``load_image`` stretches the
    file's values to 0-255 (min-max, truncated to uint8), then torchvision ``Resize(pad_size)`` on the
    PIL image (bilinear, short side ``pad_size``, long side floored), ``CenterCrop(input_size)``
    (offsets rounded half to even), ``ToTensor`` ([0, 1]) and ``ExpandChannels`` (3 copies); no
    mean/std (the card's are 0 and 1)."""
    from PIL import Image

    a = _stored_levels(x[0, 0].detach().cpu().numpy().astype(np.float64))
    a = a - a.min()
    peak = a.max()
    a = a / peak * 255.0 if peak > 0 else a  # upstream divides by zero on a blank image; black here
    img = Image.fromarray(a.astype(np.uint8), mode="L")
    short, (w, h), size = spec.pad_size, img.size, spec.input_size
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None, None].to(x.device)


def _medclip_pad_square(x: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """MedCLIP's processor (``MedCLIPFeatureExtractor`` under the transformers 4.24 it was written
    for): paste the 8-bit image on a black square of side max(input_size, w, h) at offsets
    ``int((side - w) / 2)``, ``int((side - h) / 2)``, PIL bicubic to input_size x input_size (its
    centre crop is then a no-op), ``/ 255``."""
    from PIL import Image

    img = Image.fromarray(gray8(x), mode="L")
    w, h = img.size
    side = max(spec.input_size, w, h)
    square = Image.new("L", (side, side), 0)
    square.paste(img, (int((side - w) / 2), int((side - h) / 2)))
    out = square.resize((spec.input_size, spec.input_size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0)[None, None].to(x.device)


def _gloria_area_pad_crop(x: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """GLoRIA's ``process_img``: the 8-bit image (``cv2.imread(path, 0)``) resized with OpenCV's
    INTER_AREA so its long side is ``pad_size`` (the short side ``int(short * (pad / long))``, the
    height counting as long when the image is square), zero-padded to a square (floor(pad / 2) before,
    the rest after), then torchvision's ``CenterCrop(input_size)`` (offset rounded), ``/ 255``. The
    resize is OpenCV's, bit for bit (:func:`_cv2_inter_area`), without OpenCV. (The model itself then
    upsamples to 299 px; that step is the family's, see families/gloria.py.)

    Inputs deeper than 8 bits (16-bit PNG, DICOM) are rounded to 8 bits from cxrtool's [0, 1] decode;
    ``cv2.imread(path, 0)`` would keep the high byte of a 16-bit PNG (``v >> 8``). GLoRIA was trained
    and released on 8-bit images (CheXpert JPEGs)."""
    img = gray8(x)
    pad, size = spec.pad_size, spec.input_size
    h, w = img.shape
    if h >= w:  # upstream: max_ind == 0 (the height also wins a tie)
        nh, nw = pad, max(1, int(float(w) * (pad / float(h))))
    else:
        nh, nw = max(1, int(float(h) * (pad / float(w)))), pad
    small = _cv2_inter_area(img, nh, nw)
    canvas = np.zeros((pad, pad), dtype=np.uint8)
    top, left = (pad - nh) // 2, (pad - nw) // 2  # np.pad with floor(pad / 2) before, ceil after
    canvas[top : top + nh, left : left + nw] = small
    if pad >= size:  # torchvision CenterCrop: offsets int(round((pad - size) / 2))
        off = int(round((pad - size) / 2.0))
        canvas = canvas[off : off + size, off : off + size]
    else:  # CenterCrop pads a smaller image with zeros first ((size - pad) // 2 before)
        big = np.zeros((size, size), dtype=np.uint8)
        off = (size - pad) // 2
        big[off : off + pad, off : off + pad] = canvas
        canvas = big
    return torch.from_numpy(canvas.astype(np.float32) / 255.0)[None, None].to(x.device)


_DBL_EPSILON = 2.220446049250313e-16
_COEF_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE (fixed-point weights of 8-bit linear resizing)


def _cv2_inter_area(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)`` for a 2-D uint8 image, bit for bit.

    OpenCV (imgproc/src/resize.cpp) takes one of three paths, reproduced here with its own arithmetic:

    - both scale factors whole numbers (>= 1): ``resizeAreaFast``: the mean of each block of integers;
      a 2 x 2 block is ``(a + b + c + d + 2) >> 2`` (its SIMD path, rounding halves up), any other block
      ``cvRound(float(sum) * (1.f / area))`` (halves to even);
    - both factors >= 1 otherwise: ``ResizeArea_Invoker``: float32 area weights from
      ``computeResizeAreaTab`` (double arithmetic, cast to float), summed along each row in table order,
      then over rows, then ``cvRound``;
    - any factor < 1 (the image is enlarged along that axis): OpenCV's bilinear code in "area mode"
      (weights from ``(d + 1) - (s + 1) / scale``), 11-bit fixed-point weights and its 8-bit vertical
      pass ``((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2) >> 2``.
    """
    img = np.ascontiguousarray(img, dtype=np.uint8)
    in_h, in_w = img.shape
    if (in_h, in_w) == (out_h, out_w):
        return img.copy()
    inv_x, inv_y = out_w / in_w, out_h / in_h
    scale_x, scale_y = 1.0 / inv_x, 1.0 / inv_y
    iscale_x, iscale_y = int(np.rint(scale_x)), int(np.rint(scale_y))  # saturate_cast<int>(double)
    fast = abs(scale_x - iscale_x) < _DBL_EPSILON and abs(scale_y - iscale_y) < _DBL_EPSILON
    if scale_x >= 1 and scale_y >= 1:
        if fast:
            return _cv2_area_fast(img, iscale_x, iscale_y, out_h, out_w)
        return _cv2_area_general(img, scale_x, scale_y, out_h, out_w)
    return _cv2_area_linear(img, (scale_x, inv_x), (scale_y, inv_y), out_h, out_w)


def _cv2_area_fast(img: np.ndarray, sx: int, sy: int, out_h: int, out_w: int) -> np.ndarray:
    """``resizeAreaFast_`` for whole-number factors (the source is exactly ``sy * out_h`` x ``sx * out_w``)."""
    blocks = img[: out_h * sy, : out_w * sx].astype(np.int32).reshape(out_h, sy, out_w, sx).sum(axis=(1, 3))
    if sx == 2 and sy == 2:
        return ((blocks + 2) >> 2).astype(np.uint8)
    scaled = blocks.astype(np.float32) * np.float32(1.0 / (sx * sy))  # float(1.f / area): exact in float32
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _cv2_area_tab(src: int, dst: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``computeResizeAreaTab`` as (index, weight) matrices of dst x slots, in OpenCV's order (unused
    slots: weight 0 on pixel 0, which adds exactly nothing)."""
    entries: list[list[tuple[int, float]]] = []
    for d in range(dst):
        fs1 = d * scale
        fs2 = fs1 + scale
        cell = min(scale, src - fs1)
        s2 = min(int(np.floor(fs2)), src - 1)
        s1 = min(int(np.ceil(fs1)), s2)
        row = []
        if s1 - fs1 > 1e-3:
            row.append((s1 - 1, (s1 - fs1) / cell))
        row.extend((s, 1.0 / cell) for s in range(s1, s2))
        if fs2 - s2 > 1e-3:
            row.append((s2, min(min(fs2 - s2, 1.0), cell) / cell))
        entries.append(row)
    slots = max(len(r) for r in entries)
    index = np.zeros((dst, slots), dtype=np.int64)
    weight = np.zeros((dst, slots), dtype=np.float32)  # (float) of the double weight, as OpenCV stores it
    for d, row in enumerate(entries):
        for k, (s, a) in enumerate(row):
            index[d, k], weight[d, k] = s, a
    return index, weight


def _cv2_area_general(img: np.ndarray, scale_x: float, scale_y: float, out_h: int, out_w: int) -> np.ndarray:
    """``ResizeArea_Invoker<uchar, float>``: float32 products and sums in OpenCV's order."""
    xi, xw = _cv2_area_tab(img.shape[1], out_w, scale_x)
    yi, yw = _cv2_area_tab(img.shape[0], out_h, scale_y)
    src = img.astype(np.float32)
    rows = src[:, xi[:, 0]] * xw[:, 0]
    for k in range(1, xi.shape[1]):
        rows = rows + src[:, xi[:, k]] * xw[:, k]
    out = rows[yi[:, 0]] * yw[:, :1]
    for k in range(1, yi.shape[1]):
        out = out + rows[yi[:, k]] * yw[:, k : k + 1]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _cv2_linear_area_tab(src: int, dst: int, scale: float, inv: float, horizontal: bool
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(index, fixed-point weight pairs) of OpenCV's linear resize in area mode, along one axis (only the
    horizontal table is clamped at the last pixel; rows past the edge are clamped when they are read)."""
    index = np.zeros(dst, dtype=np.int64)
    weights = np.zeros((dst, 2), dtype=np.int64)
    for d in range(dst):
        s = int(np.floor(d * scale))
        f = np.float32((d + 1) - (s + 1) * inv)
        f = np.float32(0.0) if f <= 0 else np.float32(f - np.float32(np.floor(f)))
        if horizontal and s >= src - 1:  # past the last pixel pair: the last pixel, whole
            s, f = src - 1, np.float32(0.0)
        index[d] = s
        for k, c in enumerate((np.float32(1.0) - f, f)):
            weights[d, k] = int(np.rint(np.float32(c * np.float32(_COEF_SCALE))))  # saturate_cast<short>
    return index, weights


def _cv2_area_linear(img: np.ndarray, x: tuple[float, float], y: tuple[float, float], out_h: int,
                     out_w: int) -> np.ndarray:
    """OpenCV's 8-bit linear resize (``HResizeLinear`` + ``VResizeLinear`` with ``FixedPtCast``)."""
    in_h, in_w = img.shape
    xi, xw = _cv2_linear_area_tab(in_w, out_w, *x, horizontal=True)
    yi, yw = _cv2_linear_area_tab(in_h, out_h, *y, horizontal=False)
    src = img.astype(np.int64)
    rows = src[:, xi] * xw[:, 0] + src[:, np.minimum(xi + 1, in_w - 1)] * xw[:, 1]  # int, 2048 x pixel
    r0, r1 = rows[yi] >> 4, rows[np.minimum(yi + 1, in_h - 1)] >> 4
    out = (((yw[:, :1] * r0) >> 16) + ((yw[:, 1:] * r1) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


_UPSTREAM_RULES = {"chexzero_letterbox": _chexzero_letterbox, "biovil_resize_crop": _biovil_resize_crop,
                   "medclip_pad_square": _medclip_pad_square, "gloria_area_pad_crop": _gloria_area_pad_crop}


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
