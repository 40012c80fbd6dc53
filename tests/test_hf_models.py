"""Public dual encoders as cxrtool models: Hugging Face CLIP / SigLIP and open_clip directories.

Each tiny model is saved in its library's own layout and loaded by cxrtool; cxrtool must give the
vectors the native model gives (exactly, on the same pixel tensor; to the processor's uint8
rounding, with cxrtool's own tensor preprocessing) and write the processor's contract into the
card. Scoring, `cxrtool models` and the whole pipeline: tests/test_hf_pipeline.py.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.errors import ModelError
from cxrtool.io.decode import decode_image
from cxrtool.model import ImageSpec, ModelCard, load_model, load_model_dir, save_model_dir, wrap_hf_model
from cxrtool.model.transform import resize_to_input

from .conftest import ARCHIVE
from .tiny_native import build_open_clip

TEXTS = ["cardiomegaly.", "no pleural effusion.", "the lungs are clear and there is no pneumothorax."]
runner = CliRunner()


@pytest.fixture(scope="module")
def open_clip_dir(module_tmp, tiny_text_dir):
    return build_open_clip(module_tmp.mktemp("native") / "tiny-open-clip", tiny_text_dir)


def _pixels() -> np.ndarray:
    """An 8-bit NIH radiograph, cut to 512 x 460 so the short-side crop rules' rounding matters
    (the long side lands on 35 px for a 32 px input: crop offset 1 for HF, 2 for torchvision)."""
    path = sorted((ARCHIVE / "nih").rglob("*.jpg"))[0]
    return decode_image(path).pixels[:, :460]


def _pil(pixels: np.ndarray) -> Image.Image:
    """The same image as the native processors take it: 8-bit grayscale (exact: the JPEG is 8-bit)."""
    return Image.fromarray(np.round(pixels * 255).astype(np.uint8))


def _uint8_tolerance(std: list[float]) -> float:
    """The processors resize uint8 images and round the result; cxrtool resizes floats. That
    rounding is at most half a grey level (a little more after bicubic overshoot is clipped)."""
    return 0.75 / 255 / min(std)


def _unit(t: torch.Tensor) -> np.ndarray:
    return F.normalize(t, dim=-1).detach().numpy()


def _hf_native(directory):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    return (AutoModel.from_pretrained(directory).eval(), AutoImageProcessor.from_pretrained(directory),
            AutoTokenizer.from_pretrained(directory))


def _image_vector(native, pixel_values: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return _unit(native.get_image_features(pixel_values=pixel_values).pooler_output)


# ------------------------------------------------------------------------------- HF CLIP
def test_hf_clip_card_comes_from_its_processor_and_config(clip_dir):
    card = load_model(str(clip_dir)).card
    assert (card.family, card.embed_dim, card.scoring.rule) == ("hf-clip", 16, "softmax")
    assert (card.image.input_size, card.image.resize, card.image.interpolation) == (32, "shortest_edge_center_crop",
                                                                                    "bicubic")
    assert card.image.mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert (card.text.max_length, card.text.padding, card.text.attention_mask) == (40, "longest", True)
    assert card.fingerprint.startswith("sha256:")


def test_hf_clip_preprocessing_matches_its_processor(clip_dir):
    model = load_model(str(clip_dir))
    _, processor, _ = _hf_native(clip_dir)
    ref = processor(images=_pil(_pixels()), return_tensors="pt")["pixel_values"][0]
    ours = model.preprocess(_pixels())
    assert ours.shape == ref.shape == (3, 32, 32)
    assert (ours - ref).abs().max() <= _uint8_tolerance(model.card.image.std)


def test_hf_clip_embeds_images_and_texts_like_the_native_model(clip_dir):
    model = load_model(str(clip_dir))
    native, processor, tokenizer = _hf_native(clip_dir)
    pixel_values = processor(images=_pil(_pixels()), return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(model.encode_pixels(pixel_values), _image_vector(native, pixel_values), atol=1e-6)
    cos = float(model.encode_images([_pixels()])[0] @ _image_vector(native, pixel_values)[0])
    assert cos > 0.999
    with torch.no_grad():
        ref = _unit(native.get_text_features(**tokenizer(TEXTS, padding=True, return_tensors="pt")).pooler_output)
    np.testing.assert_allclose(model.encode_texts(TEXTS), ref, atol=1e-6)


def test_hf_clip_saved_directory_describes_itself_and_stays_native(clip_dir, tmp_path):
    from transformers import CLIPModel

    model = load_model(str(clip_dir))
    saved = save_model_dir(model, tmp_path / "clip")
    card = json.loads((saved / "model.json").read_text())
    assert card["family"] == "hf-clip" and card["image"]["resize"] == "shortest_edge_center_crop"
    assert card["fingerprint"] == model.card.fingerprint
    again = load_model_dir(saved)
    assert again.card.to_dict() == ModelCard.load(saved).to_dict()
    np.testing.assert_array_equal(again.encode_texts(TEXTS), model.encode_texts(TEXTS))
    np.testing.assert_array_equal(again.encode_images([_pixels()]), model.encode_images([_pixels()]))
    native = CLIPModel.from_pretrained(saved).eval()  # still a plain transformers directory
    pixel_values = again.preprocess(_pixels())[None]
    np.testing.assert_allclose(_image_vector(native, pixel_values), again.encode_pixels(pixel_values), atol=1e-6)


def test_changed_native_weights_fail_the_fingerprint(clip_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    saved = save_model_dir(load_model(str(clip_dir)), tmp_path / "clip")
    state = load_file(saved / "model.safetensors")
    state["visual_projection.weight"] = state["visual_projection.weight"] * 1.01
    save_file(state, saved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="fingerprint"):
        load_model_dir(saved)


def test_native_weights_missing_a_tensor_are_refused_by_name(clip_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d = shutil.copytree(clip_dir, tmp_path / "clip")
    state = load_file(d / "model.safetensors")
    del state["text_projection.weight"]
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="text_projection.weight"):
        load_model_dir(d)


def test_an_in_memory_model_wraps_saves_and_loads_identically(clip_dir, tmp_path):
    """The route a converted checkpoint (e.g. CheXzero -> CLIPModel) takes into cxrtool."""
    native, processor, tokenizer = _hf_native(clip_dir)
    model = wrap_hf_model(native, processor, tokenizer, name="converted/clip")
    saved = save_model_dir(model, tmp_path / "converted", provenance={"converted_from": "a checkpoint"})
    loaded = load_model_dir(saved)
    assert loaded.card.provenance["name"] == "converted/clip"
    assert loaded.card.provenance["converted_from"] == "a checkpoint"
    np.testing.assert_array_equal(loaded.encode_texts(TEXTS), model.encode_texts(TEXTS))


# ------------------------------------------------------------------------------- HF SigLIP
def test_hf_siglip_card_records_sigmoid_scoring_and_max_length_padding(siglip_dir):
    model = load_model(str(siglip_dir))
    card = model.card
    assert (card.family, card.embed_dim) == ("hf-siglip", 32)
    assert (card.scoring.rule, card.scoring.logit_scale, card.scoring.logit_bias) == ("sigmoid", 10.0, -2.5)
    assert float(model.scale().detach()) == pytest.approx(10.0) and float(model.bias().detach()) == pytest.approx(-2.5)
    assert (card.image.input_size, card.image.resize, card.image.interpolation) == (32, "squash", "bicubic")
    assert card.image.mean == [0.5, 0.5, 0.5] and card.image.std == [0.5, 0.5, 0.5]
    assert (card.text.max_length, card.text.padding, card.text.attention_mask) == (16, "max_length", False)
    assert model.tokenize(["a."])["input_ids"].shape == (1, 16)


def test_hf_siglip_preprocessing_matches_its_processor(siglip_dir):
    model = load_model(str(siglip_dir))
    _, processor, _ = _hf_native(siglip_dir)
    ref = processor(images=_pil(_pixels()), return_tensors="pt")["pixel_values"][0]
    assert (model.preprocess(_pixels()) - ref).abs().max() <= _uint8_tolerance(model.card.image.std)


def test_hf_siglip_embeds_images_and_texts_like_the_native_model(siglip_dir):
    model = load_model(str(siglip_dir))
    native, processor, tokenizer = _hf_native(siglip_dir)
    pixel_values = processor(images=_pil(_pixels()), return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(model.encode_pixels(pixel_values), _image_vector(native, pixel_values), atol=1e-6)
    assert float(model.encode_images([_pixels()])[0] @ _image_vector(native, pixel_values)[0]) > 0.999
    # As SigLIP was trained and the HF docs prescribe: padded to max_length, no attention mask.
    ids = tokenizer(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = _unit(native.get_text_features(input_ids=ids).pooler_output)
    np.testing.assert_allclose(model.encode_texts(TEXTS), ref, atol=1e-6)


# ------------------------------------------------------------------------------- open_clip
def _open_clip_native(directory):
    import open_clip

    native, _, transform = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    return native.eval(), transform, open_clip.get_tokenizer(f"local-dir:{directory}")


def test_open_clip_card_comes_from_its_config(open_clip_dir):
    card = load_model(str(open_clip_dir)).card
    assert (card.family, card.embed_dim, card.scoring.rule) == ("open_clip", 16, "softmax")
    assert (card.image.input_size, card.image.resize, card.image.interpolation) == (32, "torchvision_center_crop",
                                                                                    "bicubic")
    assert card.image.std == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    assert (card.text.max_length, card.text.padding) == (24, "max_length")


def test_open_clip_preprocessing_matches_its_transform(open_clip_dir):
    """open_clip resizes with PIL; PIL's bicubic agrees with torch's antialiased one to the same
    half grey level (measured max 0.010 after normalisation)."""
    model = load_model(str(open_clip_dir))
    _, transform, _ = _open_clip_native(open_clip_dir)
    ref = transform(_pil(_pixels()))
    assert (model.preprocess(_pixels()) - ref).abs().max() <= _uint8_tolerance(model.card.image.std)


def test_open_clip_embeds_images_and_texts_like_the_native_model(open_clip_dir):
    model = load_model(str(open_clip_dir))
    native, transform, tokenizer = _open_clip_native(open_clip_dir)
    pixel_values = transform(_pil(_pixels()))[None]
    with torch.no_grad():
        image_ref, text_ref = _unit(native.encode_image(pixel_values)), _unit(native.encode_text(tokenizer(TEXTS)))
    np.testing.assert_allclose(model.encode_pixels(pixel_values), image_ref, atol=1e-6)
    assert float(model.encode_images([_pixels()])[0] @ image_ref[0]) > 0.999
    np.testing.assert_allclose(model.encode_texts(TEXTS), text_ref, atol=1e-6)


def test_open_clip_saved_directory_needs_no_text_tower_source(open_clip_dir, tmp_path):
    """BiomedCLIP's config names its text tower by hub name; a saved directory carries its config."""
    model = load_model(str(open_clip_dir))
    saved = save_model_dir(model, tmp_path / "oc")
    config = json.loads((saved / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_model_name"] = "nobody/unreachable-text-tower"
    (saved / "open_clip_config.json").write_text(json.dumps(config))
    loaded = load_model_dir(saved)
    assert (saved / "text" / "config.json").is_file() and (saved / "open_clip_model.safetensors").is_file()
    np.testing.assert_array_equal(loaded.encode_texts(TEXTS), model.encode_texts(TEXTS))
    assert loaded.card.fingerprint == model.card.fingerprint


def test_open_clip_directory_without_weights_is_refused(open_clip_dir, tmp_path):
    d = shutil.copytree(open_clip_dir, tmp_path / "oc")
    (d / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(ModelError, match="no open_clip weights"):
        load_model_dir(d)


# ------------------------------------------------------------------- names, hub, directories
def test_unreachable_hub_model_fails_with_what_to_download_and_where(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CXRTOOL_MODELS", str(tmp_path / "models"))
    for name in ("nobody-xyz/no-such-model-123", "hf-hub:nobody-xyz/no-such-open-clip"):
        with pytest.raises(ModelError) as info:
            load_model(name)
        repo = name.removeprefix("hf-hub:")
        assert repo in info.value.reason and "\n" not in info.value.reason
        assert f"hf download {repo} --local-dir {tmp_path / 'models' / repo}" in info.value.hint
        assert f"--model {tmp_path / 'models' / repo}" in info.value.hint


def test_unreachable_hub_model_is_one_line_from_the_cli(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CXRTOOL_MODELS", str(tmp_path / "models"))
    res = runner.invoke(app, ["embed", str(ARCHIVE), "--workspace", str(tmp_path / "ws"), "--model",
                              "google/medsiglip-448"])
    output = " ".join(res.output.split())  # the terminal may wrap the hint
    assert res.exit_code == 2
    assert "error: model 'google/medsiglip-448'" in output and "hf download google/medsiglip-448" in output
    assert "Traceback" not in output


def test_hub_name_is_found_under_the_models_home(siglip_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("CXRTOOL_MODELS", str(tmp_path / "models"))
    shutil.copytree(siglip_dir, tmp_path / "models" / "someorg" / "tiny-siglip")
    model = load_model("someorg/tiny-siglip")
    assert model.card.provenance["name"] == "someorg/tiny-siglip" and model.card.family == "hf-siglip"


def test_unknown_model_names_and_directories_are_refused_with_a_hint(tiny_text_dir, tmp_path):
    with pytest.raises(ModelError) as info:
        load_model("not a model name")
    assert info.value.hint
    with pytest.raises(ModelError, match="'bert'") as info:  # a BERT directory is no dual encoder
        load_model_dir(shutil.copytree(tiny_text_dir, tmp_path / "bert"))
    assert "CLIP" in info.value.hint


def test_crop_rules_differ_only_in_how_they_round():
    """A 35-px long side around a 32-px crop: HF floors the offset (1), torchvision rounds 1.5 to 2,
    cxrtool's own rule rounds the long side (36 px here, offset 2)."""
    x = torch.arange(512 * 460, dtype=torch.float32).reshape(1, 1, 512, 460)
    out = {rule: resize_to_input(x, ImageSpec(input_size=32, resize=rule, interpolation="nearest"))
           for rule in ("shortest_edge_center_crop", "torchvision_center_crop", "short_side_center_crop")}
    full = torch.nn.functional.interpolate(x, size=(35, 32), mode="nearest")
    assert torch.equal(out["shortest_edge_center_crop"], full[..., 1:33, :])
    assert torch.equal(out["torchvision_center_crop"], full[..., 2:34, :])
    assert all(o.shape == (1, 1, 32, 32) for o in out.values())
