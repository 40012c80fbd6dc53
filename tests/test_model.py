"""Model core: encodings, model directory round trip, strict refusal of mismatched weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cxrtool.errors import ModelError, WeightMismatchError
from cxrtool.model import ModelCard, create_model, load_model_dir, save_model_dir

from .conftest import ARCHIVE

TEXTS = ["cardiomegaly.", "no pleural effusion.", "the lungs are clear."]


def _some_images():
    return sorted(p for p in (ARCHIVE / "nih").rglob("*.jpg"))[:3]


def test_encodings_are_unit_norm_float32(tiny_model):
    img = tiny_model.encode_images(_some_images())
    txt = tiny_model.encode_texts(TEXTS)
    assert img.shape == (3, 32) and txt.shape == (3, 32)
    assert img.dtype == np.float32 and txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)


def test_model_directory_round_trip_gives_identical_embeddings(tiny_model, tiny_model_dir):
    loaded = load_model_dir(tiny_model_dir)
    assert np.array_equal(loaded.encode_images(_some_images()), tiny_model.encode_images(_some_images()))
    assert np.array_equal(loaded.encode_texts(TEXTS), tiny_model.encode_texts(TEXTS))
    assert loaded.card.to_dict() == ModelCard.load(tiny_model_dir).to_dict()


def test_card_holds_the_preprocessing_contract(tiny_model_dir):
    card = json.loads((tiny_model_dir / "model.json").read_text())
    for key in ("input_size", "resize", "mean", "std", "gray_to_channels", "timm_name"):
        assert key in card["image"]
    for key in ("max_length", "pooling"):
        assert key in card["text"]
    assert card["fingerprint"].startswith("sha256:")
    assert (tiny_model_dir / "text" / "config.json").is_file()


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_weight_is_refused_and_named(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    state = load_file(d / "model.safetensors")
    del state["text_proj.weight"]
    save_file(state, d / "model.safetensors")
    with pytest.raises(WeightMismatchError) as info:
        load_model_dir(d)
    assert "text_proj.weight" in str(info.value)
    assert info.value.missing == ["text_proj.weight"]


def test_unexpected_weight_is_refused_and_named(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    state = load_file(d / "model.safetensors")
    state["image_backbone.extra_head.weight"] = torch.zeros(2)
    save_file(state, d / "model.safetensors")
    with pytest.raises(WeightMismatchError, match="image_backbone.extra_head.weight"):
        load_model_dir(d)


def test_changed_weights_fail_the_fingerprint(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    state = load_file(d / "model.safetensors")
    state["image_proj.bias"] = state["image_proj.bias"] + 1.0
    save_file(state, d / "model.safetensors")
    with pytest.raises(ModelError, match="fingerprint"):
        load_model_dir(d)


def test_wrong_shape_is_refused(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    state = load_file(d / "model.safetensors")
    state["text_proj.weight"] = torch.zeros(16, 32)
    save_file(state, d / "model.safetensors")
    with pytest.raises(ModelError, match="text_proj.weight"):
        load_model_dir(d)


def test_directory_without_card_is_refused_with_hint(tmp_path):
    with pytest.raises(ModelError) as info:
        load_model_dir(tmp_path)
    assert "model.json" in info.value.reason and info.value.hint


def test_changed_only_save_stores_a_delta_that_loads_identically(tiny_text_dir, tmp_path):
    model = create_model("mobilenetv3_small_050", str(tiny_text_dir), embed_dim=16, input_size=64)
    model.text_backbone.requires_grad_(False)
    with torch.no_grad():
        model.image_proj.weight.mul_(2.0)
    d = save_model_dir(model, tmp_path / "delta", changed_only=True)
    stored = load_file(d / "model.safetensors")
    assert not any(k.startswith("text_backbone.") for k in stored)  # text tower comes from its source
    assert json.loads((d / "model.json").read_text())["base_weights"]
    loaded = load_model_dir(d)
    assert np.array_equal(loaded.encode_texts(TEXTS), model.encode_texts(TEXTS))


@pytest.mark.parametrize("pooling", ["cls", "eos", "mean"])
def test_pooling_modes_round_trip(tiny_text_dir, tmp_path, pooling):
    model = create_model("mobilenetv3_small_050", str(tiny_text_dir), embed_dim=16, input_size=64,
                         pooling=pooling)
    loaded = load_model_dir(save_model_dir(model, tmp_path / pooling))
    assert loaded.card.text.pooling == pooling
    assert np.array_equal(loaded.encode_texts(TEXTS), model.encode_texts(TEXTS))


def test_pooling_modes_give_different_text_features(tiny_text_dir):
    torch.manual_seed(1)
    feats = []
    for pooling in ("cls", "eos", "mean"):
        model = create_model("mobilenetv3_small_050", str(tiny_text_dir), embed_dim=16, input_size=64,
                             pooling=pooling)
        model.text_proj.load_state_dict({"weight": torch.eye(16, 32), "bias": torch.zeros(16)})
        feats.append(model.encode_texts(["a longer sentence about effusion."]))
    assert not np.allclose(feats[0], feats[1]) and not np.allclose(feats[1], feats[2])


def test_unknown_timm_model_is_refused(tiny_text_dir):
    with pytest.raises(ModelError, match="timm"):
        create_model("no_such_backbone_xyz", str(tiny_text_dir))


def test_saving_keeps_other_files_and_refuses_foreign_directories(tiny_model, tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    (d / "README.md").write_text("notes")
    save_model_dir(tiny_model, d)
    assert (d / "README.md").read_text() == "notes"
    assert not [p for p in d.iterdir() if p.name.startswith(".tmp")]
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a model directory"):
        save_model_dir(tiny_model, foreign)


def test_halves_feature_keeps_the_side_and_round_trips(tmp_path, tiny_text_dir):
    import numpy as np
    import torch

    from cxrtool.model import create_model, load_model, save_model_dir
    from cxrtool.model.dual import halves_pool

    torch.manual_seed(0)
    pooled = create_model("mobilenetv3_small_050", str(tiny_text_dir), image_weights=None, embed_dim=16,
                          input_size=64, max_length=16)
    torch.manual_seed(0)
    halves = create_model("mobilenetv3_small_050", str(tiny_text_dir), image_weights=None, embed_dim=16,
                          input_size=64, max_length=16, image_feature="halves")
    assert halves.card.image.feature == "halves"
    with torch.no_grad():
        channels = halves.image_backbone.forward_features(torch.zeros(1, 3, 64, 64)).shape[1]
    assert halves.card.image.feature_dim == 2 * channels and pooled.card.image.feature == "pooled"
    fmap = torch.arange(2 * 3 * 2 * 5, dtype=torch.float32).view(2, 3, 2, 5)
    pooled_halves = halves_pool(fmap)  # width 5: columns 0-2 and 2-4
    assert torch.allclose(pooled_halves[:, :3], fmap[..., :3].mean((2, 3)))
    assert torch.allclose(pooled_halves[:, 3:], fmap[..., 2:].mean((2, 3)))
    img = np.zeros((64, 64), dtype=np.float32)
    img[:, :20] = 1.0  # bright on the image's left only
    halves.eval()
    with torch.no_grad():
        fm = halves.image_backbone.forward_features(halves.preprocess(img)[None])
        left, right = halves_pool(fm).chunk(2, dim=1)
    assert not torch.allclose(left, right)
    d = save_model_dir(halves, tmp_path / "m")
    again = load_model(str(d))
    assert np.allclose(again.encode_images([img]), halves.encode_images([img]), atol=1e-6)


def _flip_pair_copy(model_dir, tmp_path):
    """The same weights with a flip_pair card (as `cxrtool train` writes for a model trained with flips)."""
    d = _copy(model_dir, tmp_path / "flip_pair")
    card = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**card, "embedding": "flip_pair"}))
    return load_model_dir(d)


def test_flip_pair_scores_are_the_mean_of_the_straight_and_the_mirrored_comparison(tiny_model_dir, tmp_path):
    single = load_model_dir(tiny_model_dir)
    paired = _flip_pair_copy(tiny_model_dir, tmp_path)
    assert paired.card.fingerprint == single.card.fingerprint  # same weights ...
    assert paired.card.vector_id != single.card.vector_id  # ... but vectors that must not be mixed
    rng = np.random.default_rng(0)
    img = rng.random((64, 64)).astype(np.float32)
    img[:, :24] += 0.5  # not symmetric
    mirrored = np.ascontiguousarray(img[:, ::-1])
    texts = ["small left pleural effusion.", "small right pleural effusion.", "cardiomegaly."]
    pi, pt = paired.encode_images([img, mirrored]), paired.encode_texts(texts)
    assert pi.shape == (2, 64) and pt.shape == (3, 64) and paired.card.output_dim == 64
    assert pi.dtype == np.float32 and pt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pi, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pt, axis=1), 1.0, atol=1e-5)
    si, st = single.encode_images([img, mirrored]), single.encode_texts(texts)
    # cos = mean of image vs text and mirror image vs side-swapped text
    expect = 0.5 * (si[0] @ st[0] + si[1] @ st[1])
    assert pi[0] @ pt[0] == pytest.approx(expect, abs=1e-5)
    # the mirror image with the side-swapped text scores exactly as the original: the side flips with the image
    assert pi[1] @ pt[1] == pytest.approx(pi[0] @ pt[0], abs=1e-5)
    assert pi[1] @ pt[0] == pytest.approx(pi[0] @ pt[1], abs=1e-5)
    # a text that names no side is its own mirror; an unsided score is the flip-averaged one
    assert np.allclose(pt[2][:32], pt[2][32:])
    assert pi[0] @ pt[2] == pytest.approx(0.5 * (si[0] @ st[2] + si[1] @ st[2]), abs=1e-5)
    assert paired.encode_images([]).shape == (0, 64)


def test_embedding_mode_is_validated_and_set_by_training_config(tiny_model_dir):
    from cxrtool.train.config import ConfigError, resolve_config

    card = ModelCard.load(tiny_model_dir).to_dict()
    with pytest.raises(ModelError, match="unknown embedding"):
        ModelCard.from_dict({**card, "embedding": "mirror"})
    assert ModelCard.from_dict(card).embedding == "single"  # cards written before the field: single
    assert resolve_config(overrides={"hflip_prob": 0.3}).resolved_embedding() == "flip_pair"
    assert resolve_config(overrides={}).resolved_embedding() == "single"
    assert resolve_config(overrides={"hflip_prob": 0.3, "embedding": "single"}).resolved_embedding() == "single"
    with pytest.raises(ConfigError, match="embedding"):
        resolve_config(overrides={"embedding": "both"})
