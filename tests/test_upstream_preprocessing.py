"""Imported models see the pixels their upstream code gave them, at every aspect ratio.

Each reference below is the upstream eval transform rebuilt with the calls upstream makes (Pillow
and torchvision, not cxrtool code), on real non-square radiographs: sample_data's Hannover PNGs
(640 x 524..599), crops of a real NIH image to 512 x 400 and 361 x 512 (the shapes where rounding
and flooring part ways), and a real non-square DICOM, whose reference starts from cxrtool's own
8-bit decode (decoding is not what is compared here).

- CXR-CLIP (its data_utils.transform_image with configs/transform): the image read as RGB,
  torchvision ``Resize(224)`` on the PIL image (short side 224, long side floored),
  ``CenterCrop(224)`` (offsets rounded), ``ToTensor``, ``Normalize``.
- CheXzero (data_process.preprocess at 320, then zero_shot.py's transform): Pillow resize of the
  long side to 320 (short side floored) with LANCZOS (what ``Image.ANTIALIAS`` was), pasted at
  ((320 - new) // 2) on a black 'L' image, then the 0-255 values normalised with mean 101.48761 /
  std 83.43944 and torchvision's tensor ``Resize(224, BICUBIC)`` as version 0.11 ran it: no
  antialias.

Done when cxrtool's tensors are within one grey level of the reference and an imported model's
embeddings of the two agree at cos >= 0.99999.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cxrtool.io.decode import decode_image
from cxrtool.model import load_model_dir
from cxrtool.model.imports import import_chexzero, import_cxr_clip
from cxrtool.model.imports.cxr_clip import RESNET_PREFIX
from cxrtool.model.transform import preprocess

from .checkpoint_layouts import (
    cxr_clip_config,
    heads_state,
    openai_clip_state,
    resnet50_state,
    save_cxr_clip,
    tiny_bpe_file,
)
from .conftest import ARCHIVE
from .test_import_cxr_clip import _text_state

SIZE = 224
CHEXZERO_MEAN, CHEXZERO_STD = 101.48761, 83.43944  # zero_shot.py, on the 0-255 scale


def _real_images(tmp_path_factory) -> dict[str, Image.Image]:
    """Name -> an 8-bit grayscale PIL image of a real radiograph, all non-square."""
    out = {}
    for png in sorted((ARCHIVE / "hannover").rglob("*.png"))[:2]:
        out[f"hannover/{png.parent.name}"] = Image.open(png).convert("L")
    nih = Image.open(sorted((ARCHIVE / "nih").rglob("*.jpg"))[0]).convert("L")
    out["nih crop 512x400"] = nih.crop((100, 150, 612, 550))
    out["nih crop 361x512"] = nih.crop((301, 200, 662, 712))
    dcm = ARCHIVE / "pacs" / "PAT0002" / "STUDY0001" / "SERIES01" / "IM000001.dcm"  # 1841 x 1955 JPEG 2000
    pixels = decode_image(dcm).pixels
    out["dicom 1841x1955"] = Image.fromarray(np.round(pixels * 255.0).astype(np.uint8), mode="L")
    for name, im in out.items():
        assert im.size[0] != im.size[1], name
    return out


@pytest.fixture(scope="module")
def images(module_tmp) -> dict[str, Image.Image]:
    return _real_images(module_tmp)


def _cxrtool_tensor(im: Image.Image, spec) -> torch.Tensor:
    """What cxrtool feeds the model for this 8-bit image (its [0, 1] decode of it)."""
    return preprocess(np.asarray(im, dtype=np.float32) / 255.0, spec)


def _cxr_clip_reference(im: Image.Image, mean, std) -> torch.Tensor:
    from torchvision import transforms as T

    return T.Compose([T.Resize(SIZE), T.CenterCrop(SIZE), T.ToTensor(), T.Normalize(mean, std)])(im.convert("RGB"))


def _chexzero_reference(im: Image.Image) -> torch.Tensor:
    from torchvision.transforms import InterpolationMode, Normalize, Resize

    desired = 320  # data_process.preprocess, line for line
    ratio = float(desired) / max(im.size)
    new_size = tuple(int(x * ratio) for x in im.size)
    small = im.convert("RGB").resize(new_size, Image.LANCZOS)
    canvas = Image.new("L", (desired, desired))
    canvas.paste(small, ((desired - new_size[0]) // 2, (desired - new_size[1]) // 2))
    arr = np.asarray(canvas, dtype=np.float32)  # img_to_hdf5 stores these values; CXRTestDataset repeats them
    x = torch.from_numpy(np.repeat(arr[None], 3, axis=0))
    x = Normalize((CHEXZERO_MEAN,) * 3, (CHEXZERO_STD,) * 3)(x)
    return Resize(SIZE, interpolation=InterpolationMode.BICUBIC, antialias=False)(x)


def _grey_levels(a: torch.Tensor, b: torch.Tensor, std: float) -> float:
    """The largest difference, in 8-bit grey levels of the input."""
    return float((a - b).abs().max()) * std


@pytest.fixture(scope="module")
def cxr_clip_r50(tiny_text_dir, module_tmp):
    gen = torch.Generator().manual_seed(21)
    text, cfg = _text_state(tiny_text_dir, gen)
    state = {**resnet50_state(RESNET_PREFIX, gen), **text, **heads_state(2048, cfg.hidden_size, 512, gen)}
    root = module_tmp.mktemp("cxr_clip_r50")
    ckpt = save_cxr_clip(root / "r50_m.tar", state, cxr_clip_config("resnet", SIZE, 64))
    import_cxr_clip(ckpt, root / "model", text_encoder=str(tiny_text_dir))
    return load_model_dir(root / "model")


@pytest.fixture(scope="module")
def chexzero_vit(module_tmp):
    from cxrtool.model.imports.chexzero import clip_tokenizer

    root = module_tmp.mktemp("chexzero_224")
    bpe = tiny_bpe_file(root / "bpe_tiny.txt.gz")
    vocab = len(clip_tokenizer(str(bpe))[0])
    # ViT-B/32 geometry (224 px, 32 px patches, 7 x 7 grid) at a small width
    state = openai_clip_state(vocab=vocab, text_width=64, text_layers=1, context=77, vision_width=64,
                              vision_layers=2, patch=32, grid=7, embed_dim=32, gen=torch.Generator().manual_seed(23))
    torch.save(state, root / "best_64_5e-05_original_22000_0.864.pt")
    import_chexzero(root / "best_64_5e-05_original_22000_0.864.pt", root / "model", tokenizer=str(bpe))
    return load_model_dir(root / "model")


def _cosines(model, a: list[torch.Tensor], b: list[torch.Tensor]) -> np.ndarray:
    va, vb = model.encode_pixels(torch.stack(a)), model.encode_pixels(torch.stack(b))
    return (va * vb).sum(1) / (np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1))


def test_cxr_clip_preprocessing_matches_torchvision_resize_and_center_crop(images, cxr_clip_r50):
    spec = cxr_clip_r50.card.image
    assert spec.resize == "torchvision_center_crop" and spec.input_size == SIZE
    ours, refs = [], []
    for name, im in images.items():
        a, ref = _cxrtool_tensor(im, spec), _cxr_clip_reference(im, spec.mean, spec.std)
        assert a.shape == ref.shape == (3, SIZE, SIZE), name
        assert _grey_levels(a, ref, 255.0 * min(spec.std)) <= 1.0, name
        ours.append(a)
        refs.append(ref)
    assert _cosines(cxr_clip_r50, ours, refs).min() >= 0.99999


def test_chexzero_preprocessing_matches_its_320_letterbox_then_bicubic_resize(images, chexzero_vit):
    spec = chexzero_vit.card.image
    assert (spec.resize, spec.pad_size, spec.input_size) == ("chexzero_letterbox", 320, SIZE)
    ours, refs = [], []
    for name, im in images.items():
        a, ref = _cxrtool_tensor(im, spec), _chexzero_reference(im)
        assert a.shape == ref.shape == (3, SIZE, SIZE), name
        assert _grey_levels(a, ref, CHEXZERO_STD) <= 1.0, name
        ours.append(a)
        refs.append(ref)
    assert _cosines(chexzero_vit, ours, refs).min() >= 0.99999


def test_the_references_tell_the_old_rules_apart(images):
    """The comparisons above can fail: cxrtool's previous rules (long side rounded; one-step
    letterbox to 224) are more than a grey level away from the references on these images."""
    from dataclasses import replace

    from cxrtool.model.card import ImageSpec

    crop_spec = ImageSpec(input_size=SIZE, resize="short_side_center_crop", interpolation="bilinear")
    box_spec = ImageSpec(input_size=SIZE, resize="letterbox", interpolation="bicubic",
                         mean=[CHEXZERO_MEAN / 255] * 3, std=[CHEXZERO_STD / 255] * 3)
    im = images["nih crop 512x400"]
    assert _grey_levels(_cxrtool_tensor(im, crop_spec), _cxr_clip_reference(im, crop_spec.mean, crop_spec.std),
                        127.5) > 1.0
    assert _grey_levels(_cxrtool_tensor(im, box_spec), _chexzero_reference(im), CHEXZERO_STD) > 1.0
    exact = replace(crop_spec, resize="torchvision_center_crop")
    assert _grey_levels(_cxrtool_tensor(im, exact), _cxr_clip_reference(im, exact.mean, exact.std), 127.5) <= 1.0


def test_a_reduced_resolution_decode_feeds_the_same_geometry(chexzero_vit):
    """Embedding decodes large JPEG 2000 DICOMs at a reduced resolution; for CheXzero it keeps at
    least the 320 px its letterbox starts from, so the image is never upscaled into it."""
    dcm = ARCHIVE / "pacs" / "PAT0002" / "STUDY0001" / "SERIES01" / "IM000001.dcm"
    spec = chexzero_vit.card.image
    reduced = decode_image(dcm, min_side=spec.decode_side)
    assert min(reduced.pixels.shape) >= 320 and reduced.meta.get("decode_scale", 1) < 1
    full = decode_image(dcm).pixels
    cos = _cosines(chexzero_vit, [preprocess(reduced.pixels, spec)], [preprocess(full, spec)])
    assert cos.min() >= 0.9999
