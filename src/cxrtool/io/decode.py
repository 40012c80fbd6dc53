"""The one place where files become pixels.

Every image in cxrtool - training, embedding, search-by-image, tests - goes through
:func:`decode_image`, which returns a 2-D float32 array in [0, 1] where 1 is bright (bone white),
whatever the source format:

* DICOM via pydicom + the pylibjpeg plugins (JPEG baseline/extended/lossless, JPEG-LS,
  JPEG 2000, RLE): the grayscale pipeline of PS3.3 C.11 - modality LUT -> VOI LUT (the VOI LUT
  Sequence, or the window with its VOI LUT Function: LINEAR, LINEAR_EXACT, SIGMOID) -> one
  polarity step (MONOCHROME1 and Presentation LUT Shape INVERSE are the same inversion) -> [0, 1].
* PNG/JPEG/TIFF via Pillow: 8- or 16-bit, gray or colour (colour -> luminance).

Failures raise :class:`~cxrtool.errors.DecodeError` (or ``NotAnImageError`` for DICOM objects that
carry no pixels) with a one-line reason, so a bulk run can log the file and go on.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrtool.constants import DICOM_SUFFIXES, RASTER_SUFFIXES
from cxrtool.errors import DecodeError, NotAnImageError
from cxrtool.io.dicom_header import dicom_safe_meta, has_dicom_signature, open_dicom


@dataclass
class DecodedImage:
    """A decoded radiograph: ``pixels`` is float32 HxW in [0, 1], higher = brighter."""

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def is_dicom_file(path: Path) -> bool:
    """True if the file carries the DICOM Part 10 signature; False also when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return has_dicom_signature(fh.read(132))
    except OSError:
        return False


def _source(path: Path, data: bytes | None) -> Path | io.BytesIO:
    """What Pillow should open: the bytes the caller already read (one read per file), else the path."""
    return path if data is None else io.BytesIO(data)


def decode_image(path: str | Path, min_side: int | None = None, data: bytes | None = None) -> DecodedImage:
    """Decode a DICOM or raster image file into a [0, 1] float32 grayscale image.

    ``min_side``: the smallest short side the caller needs (e.g. the model's input size). Where
    the codec can, the image is decoded at a reduced resolution that still has at least this
    short side (JPEG 2000 resolution levels, JPEG DCT scaling) - many times faster for
    2,000-pixel radiographs feeding a 224-pixel model. ``None`` decodes at full size.
    ``data``: the file's bytes, if the caller has read them already (the embed pipeline reads
    each file once, hashes it and parses those bytes); ``path`` then only names the file in
    errors and gives its suffix.
    """
    path = Path(path)
    if data is None and not path.is_file():
        raise DecodeError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return decode_raster(path, min_side, data)
    if suffix in DICOM_SUFFIXES or (is_dicom_file(path) if data is None else has_dicom_signature(data[:132])):
        return decode_dicom(path, min_side, data)
    raise DecodeError(path, "not a DICOM file (no 'DICM' signature) and not a known image type")


def decode_bytes(data: bytes, name: str = "upload", min_side: int | None = None) -> DecodedImage:
    """Decode a file's bytes by their content, not a name: an uploaded file's name may be missing
    or wrong (a DICOM saved as ``.png``, an extension-less PACS file). DICOM if the bytes carry the
    'DICM' signature, else whatever Pillow recognises. ``name`` only labels errors."""
    if has_dicom_signature(data[:132]):
        return decode_dicom(Path(name), min_side, data)
    return decode_raster(Path(name), min_side, data)


# --------------------------------------------------------------------------------------- DICOM


def decode_dicom(path: Path, min_side: int | None = None, data: bytes | None = None) -> DecodedImage:
    """DICOM -> [0, 1]: modality LUT, VOI LUT/window, polarity (see :func:`dicom_to_unit`), any bit depth.
    ``data``: the file's bytes if already read (see :func:`decode_image`)."""
    ds = open_dicom(path, data, pixels=True)
    meta = dicom_safe_meta(ds)
    if "PixelData" not in ds:
        if "Rows" in ds and "Columns" in ds:
            raise DecodeError(path, "image header without pixel data (truncated file?)")
        if "SOPClassUID" not in ds:
            raise DecodeError(path, "no readable DICOM attributes (truncated or corrupt file)")
        kind = str(getattr(ds, "Modality", "") or "object")
        raise NotAnImageError(path, f"DICOM {kind} without pixel data (not an image)")
    arr = _reduced_dicom_pixels(ds, min_side, meta) if min_side else None
    try:
        if arr is None:
            arr = ds.pixel_array
    except Exception as exc:
        ts = meta.get("TransferSyntaxUID", "?")
        raise DecodeError(
            path,
            f"cannot decode pixel data (transfer syntax {ts}): {type(exc).__name__}: {exc}",
            "check that pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg and pylibjpeg-rle are installed",
        ) from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]  # multi-frame: the first frame stands for the object
        meta["NumberOfFrames"] = frames
    if min_side and arr.ndim == 2 and "decode_scale" not in meta:
        arr = _box_reduce(arr, min_side, meta)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:  # colour (secondary captures): luminance
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        arr = _luminance(arr.astype(np.float32))
        return DecodedImage(_minmax(arr), meta)
    return DecodedImage(dicom_to_unit(arr, ds), meta)


# Transfer syntaxes whose single frame Pillow can decode at reduced resolution.
_J2K_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
_JPEG8_SYNTAXES = {"1.2.840.10008.1.2.4.50"}


def _reduced_dicom_pixels(ds: Any, min_side: int, meta: dict[str, Any]) -> np.ndarray | None:
    """Stored pixel values at a reduced resolution, or None to fall back to a full decode.

    Only single-frame, unsigned, grayscale JPEG 2000 / 8-bit JPEG frames take this path; the
    modality/VOI/polarity pipeline is applied afterwards exactly as for a full decode.
    """
    from PIL import Image
    from pydicom.encaps import generate_frames

    ts = meta.get("TransferSyntaxUID", "")
    if ts not in _J2K_SYNTAXES | _JPEG8_SYNTAXES:
        return None
    if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1 or int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        return None
    if int(getattr(ds, "PixelRepresentation", 0)) != 0:
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    factor = 1
    while min(rows, cols) // (factor * 2) >= min_side and factor < 32:
        factor *= 2
    if factor == 1:
        return None
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception:
        return None
    arr = None
    while factor > 1 and arr is None:  # a codestream may have fewer resolution levels: step down
        try:
            with Image.open(io.BytesIO(frame)) as im:
                if ts in _J2K_SYNTAXES:
                    im.reduce = int(math.log2(factor))
                elif im.mode != "L":
                    return None
                else:
                    im.draft("L", (cols // factor, rows // factor))
                im.load()
                arr = np.asarray(im)
        except Exception:  # anything unusual: try a smaller reduction, finally the full decode
            factor //= 2
    if arr is None or arr.ndim != 2 or min(arr.shape) < min_side // 2:
        return None
    if ts in _J2K_SYNTAXES and arr.dtype == np.uint16:
        precision = _j2k_precision(frame)
        if precision is None:  # cannot tell how far Pillow widened the samples: full decode
            return None
        if precision < 16:
            arr = arr >> (16 - precision)  # Pillow widens < 16-bit samples to 16 bits
    meta["decode_scale"] = round(arr.shape[0] / rows, 4)
    return arr


def _j2k_precision(codestream: bytes) -> int | None:
    """Bit depth of the first component of a J2K codestream (from its SIZ marker, via pydicom), or
    None when it cannot be read or the samples are signed (Pillow's reduced decode is then not
    trusted)."""
    from pydicom.pixels.utils import get_j2k_parameters

    params = get_j2k_parameters(codestream)
    if params.get("is_signed") or not params.get("precision"):
        return None
    return int(params["precision"])


def dicom_to_unit(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Stored grayscale values -> float32 [0, 1], 1 = bright, by the pipeline of PS3.3 C.11.

    1. Modality LUT (rescale slope/intercept or Modality LUT Sequence): pydicom's
       ``apply_modality_lut``.
    2. VOI LUT: the VOI LUT Sequence if present (pydicom's ``apply_voi``, which handles the
       descriptor's first-mapped value; output / (2**bits - 1)); else the first window with its VOI
       LUT Function, computed here straight onto [0, 1] (pydicom's ``apply_windowing`` maps onto a
       range of its own derived from BitsStored/rescale, and raises on a width below its minimum
       or an unknown or multi-valued function, where a header's first value is used here). No VOI
       in the header: 8-bit data its own 0-255, else the data's 0.5-99.5 percentile range.
    3. One polarity step: MONOCHROME1 and Presentation LUT Shape INVERSE are the same inversion
       and invert once, y -> 1 - y on the fixed [0, 1] range. Not pydicom's
       ``apply_presentation_lut``: it inverts about the array's maximum, which differs between a
       reduced and a full-size decode.

    A VOI that misses the data (< 5 % of the pixels inside the window c +- w/2, whatever its
    function, or strictly inside a VOI LUT's output range; seen on a real 16-bit DX whose pixel
    values were offset after the window was written, where pydicom's VOI gives a black image) is
    replaced by a linear map of the data's own percentile range.
    """
    from pydicom.pixels import apply_modality_lut

    modality = apply_modality_lut(arr, ds)
    values = x = np.asarray(modality, dtype=np.float32)
    window = None
    if _has_voi_lut_sequence(ds):
        x = _apply_voi_lut_sequence(modality, ds)
        lo, hi = 0.0, 1.0
    elif (window := _window_of(ds)) is not None:
        center, width, _ = window
        lo, hi = center - width / 2.0, center + width / 2.0
    elif int(getattr(ds, "BitsStored", 16) or 16) <= 8 and "RescaleSlope" not in ds:
        lo, hi = 0.0, 255.0  # 8-bit display data: its own range, as for a PNG/JPEG
    else:
        # No window in the header: the data's 0.5-99.5 percentile range. Percentiles, unlike
        # min/max, barely move between a full and a reduced-resolution decode.
        lo, hi = _percentile_range(x)
    sample = _subsample(x)
    inside = float(np.mean((sample > lo) & (sample < hi))) if sample.size else 1.0
    if inside < 0.05:
        # The header's VOI misses the data: fall back to the data's own (modality) range.
        y = _scale(values, *_percentile_range(values))
    elif window is not None:
        y = _apply_window(x, *window)
    else:
        y = _scale(x, lo, hi)
    if _inverts(ds):
        y = 1.0 - y
    return y.astype(np.float32, copy=False)


_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def _window_of(ds: Any) -> tuple[float, float, str] | None:
    """(center, width, VOI LUT Function) of the first window, or None if there is no usable one.
    An unknown function is read as LINEAR (the standard's default); a LINEAR width below 1 as 1."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center, width = float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth))
    except (TypeError, ValueError):
        return None
    function = str(_first(ds.get("VOILUTFunction")) or "LINEAR").strip().upper()
    if function not in _VOI_FUNCTIONS:
        function = "LINEAR"
    if function == "LINEAR":
        width = max(width, 1.0)
    return center, width, function


def _apply_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3 with y_min = 0, y_max = 1 (float64 inside: a fractional
    center would lose ~1e-4 as a float32 next to 16-bit values). Callers guarantee width > 0
    (>= 1 for LINEAR)."""
    v = x.astype(np.float64)
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (v - center) / width))
    elif function == "LINEAR_EXACT":  # 0 at x <= c - w/2, 1 at x > c + w/2, linear between
        y = np.clip((v - center) / width + 0.5, 0.0, 1.0)
    elif width <= 1.0:  # LINEAR with w = 1: a threshold at c - 0.5
        y = (v > center - 0.5).astype(np.float64)
    else:  # LINEAR: 0 at x <= c - 0.5 - (w-1)/2, 1 at x > c - 0.5 + (w-1)/2, linear between
        y = np.clip((v - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    return y.astype(np.float32)


def _has_voi_lut_sequence(ds: Any) -> bool:
    """A VOI LUT Sequence whose first item has a descriptor and data (as pydicom's apply_voi_lut)."""
    seq = ds.get("VOILUTSequence")
    return bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]


def _apply_voi_lut_sequence(values: np.ndarray, ds: Any) -> np.ndarray:
    """The first VOI LUT of the sequence via pydicom's ``apply_voi``, scaled by the LUT's nominal
    bit depth to [0, 1]. Values are rounded to integers (box-reduced means and rescaled values are
    floats; pydicom would truncate them and warn) and clipped to the LUT's input range first, which
    is what the standard's first/last-entry rule does anyway and keeps pydicom's uint16 index from
    wrapping."""
    from pydicom.pixels import apply_voi

    entries, first, bits = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
    entries = entries or 65536
    v = np.rint(values) if np.issubdtype(values.dtype, np.floating) else values
    v = np.clip(v.astype(np.int64), first, first + entries - 1)
    return (apply_voi(v, ds).astype(np.float32) / float(2 ** (bits or 16) - 1)).clip(0.0, 1.0)


def _inverts(ds: Any) -> bool:
    """True when the display must be inverted once: MONOCHROME1 (0 = white) or Presentation LUT
    Shape INVERSE. The DX module pairs them (INVERSE "shall be used" with MONOCHROME1): both name
    the same inversion, so a file carrying both is still inverted once."""
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    shape = str(_first(ds.get("PresentationLUTShape")) or "").strip().upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


# -------------------------------------------------------------------------------------- raster


def decode_raster(path: Path, min_side: int | None = None, data: bytes | None = None) -> DecodedImage:
    """PNG/JPEG/TIFF -> [0, 1]. 16-bit data is scaled by the bit depth its maximum implies.
    ``data``: the file's bytes if already read (see :func:`decode_image`)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(_source(path, data)) as im:
            stored_w, stored_h = im.size  # before any reduced decode
            # DCT scaling only pays (and only stays faithful) for large JPEGs; a 512-px research
            # JPEG decodes in ~2 ms either way and keeps the exact pixels training saw.
            if min_side and im.format == "JPEG" and min(im.size) >= 4 * min_side:
                factor = 1
                while min(im.size) // (factor * 2) >= min_side and factor < 8:
                    factor *= 2
                im.draft(im.mode if im.mode in ("L", "RGB") else "RGB", (im.size[0] // factor, im.size[1] // factor))
            im = ImageOps.exif_transpose(im)
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
            elif mode in ("L", "1"):
                arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
                mode = "L"
            else:
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
                arr = _luminance(rgb)
    except UnidentifiedImageError:
        raise DecodeError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(path, f"corrupt or truncated image ({exc})") from None
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        peak = float(arr.max()) if arr.size else 0.0
        bits = max(8, math.ceil(math.log2(peak + 1))) if peak > 0 else 8
        arr = _scale(arr, 0.0, float(2**bits - 1))
    elif mode == "F":
        arr = _minmax(arr)
    if arr.ndim != 2 or min(arr.shape) < 8:
        raise DecodeError(path, f"image too small or malformed (shape {arr.shape})")
    return DecodedImage(np.ascontiguousarray(arr, dtype=np.float32),
                        {"Modality": "", "format": mode, "Rows": stored_h, "Columns": stored_w})


# ------------------------------------------------------------------------------------- helpers


def _box_reduce(arr: np.ndarray, min_side: int, meta: dict[str, Any]) -> np.ndarray:
    """Average f x f blocks (f a power of two keeping the short side >= min_side) of stored
    values, so the LUT pipeline and the resize run on 1/f² of the pixels. A box filter before the
    final antialiased resize keeps the model input close to a full-resolution resize."""
    h, w = arr.shape
    f = 1
    while min(h, w) // (f * 2) >= min_side and f < 32:
        f *= 2
    if f == 1:
        return arr
    hh, ww = h // f * f, w // f * f
    reduced = arr[:hh, :ww].reshape(hh // f, f, ww // f, f).mean(axis=(1, 3), dtype=np.float32)
    meta["decode_scale"] = round(1 / f, 4)
    return reduced


def _subsample(x: np.ndarray, target: int = 512) -> np.ndarray:
    """A strided view with a short side of about ``target``: statistics of a 2,000-px image
    from ~1/16 of its pixels, at a fraction of the cost (a full np.percentile sorts 4 M values)."""
    step = max(1, min(x.shape[-2:]) // target)
    return x[..., ::step, ::step]


def _percentile_range(x: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(_subsample(x), [0.5, 99.5])
    return float(lo), float(hi)


def _first(value: Any) -> Any:
    """Window values (and VOI LUT Function) may be multi-valued; the first is the default
    presentation. A single string is one value, not a sequence of characters."""
    if isinstance(value, (str, bytes)):
        return value
    try:
        return value[0]
    except (TypeError, IndexError, KeyError):
        return value


def _scale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _minmax(x: np.ndarray) -> np.ndarray:
    return _scale(x.astype(np.float32), float(x.min()), float(x.max()))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an HxWx3 array (alpha, if any, is dropped)."""
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.float32)
