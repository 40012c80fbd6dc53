"""`import_cxr_clip`: released CXR-CLIP layouts import strictly, and embed exactly as their own tensors say.

Checkpoints are synthetic but in the released layout (tests/checkpoint_layouts.py): a real-shape
torchvision ResNet-50 and a tiny Swin (transformers-4.x names and buffers) with a tiny BERT, an
OmegaConf-style config, optimizer and scheduler state, saved with torch.save as CXR-CLIP's trainer
does. References: torchvision's resnet50 loaded with the checkpoint's own names, and hand-written
Swin/BERT forwards over the checkpoint tensors.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from cxrtool.errors import CheckpointMismatchError, ModelError
from cxrtool.model import load_model_dir
from cxrtool.model.imports import import_cxr_clip
from cxrtool.model.imports.cxr_clip import RESNET_PREFIX, SWIN_PREFIX, TEXT_PREFIX

from .checkpoint_layouts import (
    TINY_SWIN,
    TINY_SWIN_IMAGE_SIZE,
    bert_4x_state,
    bert_reference,
    cxr_clip_config,
    heads_state,
    project,
    resnet50_state,
    save_cxr_clip,
    swin_reference,
    tiny_swin_cxr_clip_state,
)
from .conftest import ARCHIVE

SWIN, IMAGE_SIZE = TINY_SWIN, TINY_SWIN_IMAGE_SIZE
TEXTS = ["pleural effusion.", "no acute cardiopulmonary process. the lungs are clear.", "cardiomegaly"]


def _images(n=3):
    return sorted((ARCHIVE / "nih").rglob("*.jpg"))[:n]


def _text_state(text_dir, gen):
    from transformers import BertConfig

    cfg = BertConfig.from_pretrained(text_dir)
    return bert_4x_state(TEXT_PREFIX, cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size,
                         cfg.max_position_embeddings, gen), cfg


@pytest.fixture(scope="module")
def swin_state(tiny_text_dir):
    return tiny_swin_cxr_clip_state(tiny_text_dir)


@pytest.fixture(scope="module")
def swin_checkpoint(swin_state, module_tmp):
    return save_cxr_clip(module_tmp.mktemp("ckpt") / "swint_mc.tar", swin_state,
                         cxr_clip_config("swin", IMAGE_SIZE, 64))


@pytest.fixture(scope="module")
def swin_import(swin_checkpoint, tiny_text_dir, module_tmp):
    out = module_tmp.mktemp("imported") / "swint_mc"
    return import_cxr_clip(swin_checkpoint, out, text_encoder=str(tiny_text_dir)), out


def test_swin_import_embeds_like_a_hand_written_swin_and_bert_over_the_checkpoint(swin_import, swin_state):
    _, out = swin_import
    model = load_model_dir(out)
    pixels = torch.stack([model.preprocess(p) for p in _images()])
    feats = swin_reference(swin_state, SWIN_PREFIX, pixels, SWIN["window"])[:, 0]  # CXR-CLIP: first token
    expected = project(feats, swin_state, "image_projection.projection").numpy()
    np.testing.assert_allclose(model.encode_pixels(pixels), expected, atol=2e-5)

    enc = model.tokenize(TEXTS)
    hidden = bert_reference(swin_state, TEXT_PREFIX, enc["input_ids"], enc["attention_mask"], heads=2)
    eos = enc["attention_mask"].sum(1) - 1  # the [SEP] token of each text (texts differ in length)
    expected_text = project(hidden[torch.arange(len(TEXTS)), eos], swin_state, "text_projection.projection")
    np.testing.assert_allclose(model.encode_texts(TEXTS), expected_text.numpy(), atol=2e-5)
    assert model.logit_scale.item() == swin_state["logit_scale"].item()


def test_the_swin_reference_would_notice_swapped_query_and_key(swin_state):
    """The comparison above can fail: misplacing one same-shape tensor changes the reference output."""
    pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    swapped = dict(swin_state)
    block = SWIN_PREFIX + "encoder.layers.0.blocks.1.attention.self."
    swapped[block + "query.weight"], swapped[block + "key.weight"] = swin_state[block + "key.weight"], \
        swin_state[block + "query.weight"]
    a = swin_reference(swin_state, SWIN_PREFIX, pixels, SWIN["window"])[:, 0]
    b = swin_reference(swapped, SWIN_PREFIX, pixels, SWIN["window"])[:, 0]
    assert (a - b).abs().max() > 1e-3


def test_swin_card_holds_cxr_clip_preprocessing_and_provenance(swin_import, swin_checkpoint, swin_state):
    report, out = swin_import
    card = json.loads((out / "model.json").read_text())
    assert card["image"]["backend"] == "hf" and card["image"]["feature"] == "first_token"
    assert card["image"]["mean"] == [0.5] * 3 and card["image"]["std"] == [0.5] * 3
    assert card["image"]["input_size"] == IMAGE_SIZE and card["image"]["resize"] == "torchvision_center_crop"
    assert card["text"]["pooling"] == "eos" and card["text"]["max_length"] == 64 and card["embed_dim"] == 16
    assert (out / "image" / "config.json").is_file() and (out / "text" / "config.json").is_file()
    prov = card["provenance"]
    assert prov["source_sha256"] == hashlib.sha256(swin_checkpoint.read_bytes()).hexdigest() == report.sha256
    assert prov["source_file"] == "swint_mc.tar" and prov["epoch"] == 7 and "CC BY-NC-SA 4.0" in prov["licence"]
    # every obsolete buffer is listed: BERT position_ids and one relative_position_index per Swin block
    assert prov["dropped_buffers"] == report.dropped
    assert sum(k.endswith("relative_position_index") for k in report.dropped) == sum(SWIN["depths"])
    assert TEXT_PREFIX + "embeddings.position_ids" in report.dropped
    assert report.ignored == ["optimizer", "scheduler"]
    assert report.tensors + len(report.dropped) == len(swin_state)  # every checkpoint tensor accounted for


@pytest.fixture(scope="module")
def resnet_state(tiny_text_dir):
    gen = torch.Generator().manual_seed(50)
    text, cfg = _text_state(tiny_text_dir, gen)
    return {**resnet50_state(RESNET_PREFIX, gen), **text, **heads_state(2048, cfg.hidden_size, 512, gen)}


def test_resnet50_import_embeds_like_torchvision_resnet50_with_the_checkpoint_names(resnet_state, tiny_text_dir,
                                                                                     tmp_path):
    import torchvision

    ckpt = save_cxr_clip(tmp_path / "r50_m.tar", resnet_state, cxr_clip_config("resnet", 224, 64), epoch=3)
    report = import_cxr_clip(ckpt, tmp_path / "r50_m", text_encoder=str(tiny_text_dir))
    model = load_model_dir(tmp_path / "r50_m")
    card = model.card
    assert (card.image.timm_name, card.image.input_size, card.image.feature_dim) == ("resnet50", 224, 2048)
    assert card.image.mean == [0.485, 0.456, 0.406] and card.image.std == [0.229, 0.224, 0.225]
    assert report.architecture.startswith("ResNet-50") and report.dropped == [TEXT_PREFIX + "embeddings.position_ids"]

    reference = torchvision.models.resnet50()
    reference.fc = torch.nn.Identity()  # CXR-CLIP deletes fc and returns the flattened avgpool output
    reference.load_state_dict({k[len(RESNET_PREFIX):]: v for k, v in resnet_state.items()
                               if k.startswith(RESNET_PREFIX)}, strict=True)
    pixels = torch.stack([model.preprocess(p) for p in _images(2)])
    with torch.no_grad():
        expected = project(reference.eval()(pixels), resnet_state, "image_projection.projection").numpy()
    np.testing.assert_allclose(model.encode_pixels(pixels), expected, atol=2e-5)


@pytest.mark.parametrize("key", [
    SWIN_PREFIX + "encoder.layers.1.blocks.1.attention.self.key.weight",
    SWIN_PREFIX + "encoder.layers.0.blocks.0.intermediate.dense.bias",
    TEXT_PREFIX + "encoder.layer.1.output.LayerNorm.weight",
    "text_projection.projection.bias",
    "logit_scale",
])
def test_a_removed_weight_is_refused_by_name_and_nothing_is_written(swin_state, tiny_text_dir, tmp_path, key):
    state = {k: v for k, v in swin_state.items() if k != key}
    ckpt = save_cxr_clip(tmp_path / "cut.tar", state, cxr_clip_config("swin", IMAGE_SIZE, 64))
    with pytest.raises(CheckpointMismatchError) as info:
        import_cxr_clip(ckpt, tmp_path / "out", text_encoder=str(tiny_text_dir))
    assert info.value.missing == [key] and key in info.value.reason and info.value.hint
    assert not (tmp_path / "out").exists()


def test_a_renamed_weight_is_refused_naming_both_names(swin_state, tiny_text_dir, tmp_path):
    old = SWIN_PREFIX + "encoder.layers.0.blocks.1.attention.self.query.weight"
    new = SWIN_PREFIX + "encoder.layers.0.blocks.1.attention.q_proj.weight"  # half-converted to 5.x names
    state = {(new if k == old else k): v for k, v in swin_state.items()}
    ckpt = save_cxr_clip(tmp_path / "renamed.tar", state, cxr_clip_config("swin", IMAGE_SIZE, 64))
    with pytest.raises(CheckpointMismatchError) as info:
        import_cxr_clip(ckpt, tmp_path / "out", text_encoder=str(tiny_text_dir))
    assert info.value.missing == [old] and info.value.unexpected == [new]


@pytest.mark.parametrize("extra", [SWIN_PREFIX + "pooler.dense.weight", "image_projection.fc.weight",
                                   RESNET_PREFIX + "fc.weight"])
def test_an_extra_weight_is_refused_by_name(swin_state, tiny_text_dir, tmp_path, extra):
    ckpt = save_cxr_clip(tmp_path / "extra.tar", {**swin_state, extra: torch.zeros(2, 2)},
                         cxr_clip_config("swin", IMAGE_SIZE, 64))
    with pytest.raises(CheckpointMismatchError) as info:
        import_cxr_clip(ckpt, tmp_path / "out", text_encoder=str(tiny_text_dir))
    assert extra in info.value.unexpected and extra in info.value.reason


def test_a_wrong_shape_is_refused_by_name(swin_state, tiny_text_dir, tmp_path):
    key = TEXT_PREFIX + "encoder.layer.0.attention.self.value.weight"
    ckpt = save_cxr_clip(tmp_path / "shape.tar", {**swin_state, key: torch.zeros(8, 8)},
                         cxr_clip_config("swin", IMAGE_SIZE, 64))
    with pytest.raises(ModelError, match=r"attention\.self\.value\.weight has shape \(8, 8\)"):
        import_cxr_clip(ckpt, tmp_path / "out", text_encoder=str(tiny_text_dir))


def test_an_obsolete_buffer_with_other_values_is_refused(swin_state, tiny_text_dir, tmp_path):
    key = SWIN_PREFIX + "encoder.layers.0.blocks.0.attention.self.relative_position_index"
    ckpt = save_cxr_clip(tmp_path / "index.tar", {**swin_state, key: swin_state[key].flip(0)},
                         cxr_clip_config("swin", IMAGE_SIZE, 64))
    with pytest.raises(ModelError, match="relative_position_index differs"):
        import_cxr_clip(ckpt, tmp_path / "out", text_encoder=str(tiny_text_dir))


def test_a_bare_state_dict_imports_with_cxr_clip_defaults(swin_state, tiny_text_dir, tmp_path):
    """Someone saved ckpt['model'] alone: no config, so CXR-CLIP's own defaults (224 px, 256 tokens) apply."""
    torch.save(swin_state, tmp_path / "bare.pt")
    report = import_cxr_clip(tmp_path / "bare.pt", tmp_path / "out", text_encoder=str(tiny_text_dir))
    card = load_model_dir(tmp_path / "out").card
    assert (card.image.input_size, card.text.max_length, report.epoch) == (224, 256, None)


def test_unreachable_hub_says_exactly_what_to_download(swin_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        import_cxr_clip(swin_checkpoint, tmp_path / "out")  # default: emilyalsentzer/Bio_ClinicalBERT
    err = info.value
    assert "emilyalsentzer/Bio_ClinicalBERT" in err.reason and "\n" not in err.reason
    assert "https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT" in err.hint
    assert "config.json" in err.hint and "vocab.txt" in err.hint and "--text-encoder" in err.hint


def test_a_text_encoder_folder_without_its_vocabulary_is_refused(swin_checkpoint, tiny_text_dir, tmp_path):
    """transformers would build a 5-token tokenizer from config.json alone, without a word."""
    import shutil

    (tmp_path / "bert").mkdir()
    shutil.copy(tiny_text_dir / "config.json", tmp_path / "bert")
    with pytest.raises(ModelError, match="tokenizer has 5 tokens"):
        import_cxr_clip(swin_checkpoint, tmp_path / "out", text_encoder=str(tmp_path / "bert"))


def test_an_existing_model_is_replaced_only_with_overwrite(swin_checkpoint, swin_import, tiny_text_dir):
    _, out = swin_import
    with pytest.raises(ModelError, match="already holds a model"):
        import_cxr_clip(swin_checkpoint, out, text_encoder=str(tiny_text_dir))
    report = import_cxr_clip(swin_checkpoint, out, text_encoder=str(tiny_text_dir), overwrite=True)
    assert report.fingerprint == load_model_dir(out).card.fingerprint


def test_legacy_torch_save_format_imports_too(swin_state, tiny_text_dir, tmp_path, swin_import):
    ckpt = save_cxr_clip(tmp_path / "legacy.tar", swin_state, cxr_clip_config("swin", IMAGE_SIZE, 64),
                         legacy_format=True)
    report = import_cxr_clip(ckpt, tmp_path / "out", text_encoder=str(tiny_text_dir))
    assert report.fingerprint == swin_import[0].fingerprint  # same tensors, same model


@pytest.mark.parametrize(("backend", "feature"), [("keras", "pooled"), ("timm", "first_token"), ("hf", "mean")])
def test_card_refuses_an_image_backend_or_feature_it_cannot_build(swin_import, backend, feature):
    from cxrtool.model import ModelCard

    _, out = swin_import
    data = json.loads((out / "model.json").read_text())
    data["image"].update(backend=backend, feature=feature, timm_name="resnet50")
    with pytest.raises(ModelError, match="image backend|image feature"):
        ModelCard.from_dict(data)
