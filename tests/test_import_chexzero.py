"""`import_chexzero`: OpenAI-CLIP state dicts become transformers CLIPModels that embed as OpenAI CLIP does.

The checkpoint is a tiny OpenAI-CLIP ViT in CheXzero's layout (``torch.save(model.state_dict())``,
optionally with the float16 weights a GPU-trained checkpoint has). The reference is OpenAI CLIP's
forward pass written out over the checkpoint tensors (tests/checkpoint_layouts.py), so a
mis-split q/k/v or an untransposed projection shows up as different embeddings.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from cxrtool.errors import CheckpointMismatchError, ModelError
from cxrtool.model import load_model_dir
from cxrtool.model.imports import import_chexzero
from cxrtool.model.imports.chexzero import CHEXZERO_MEAN, CHEXZERO_STD, clip_tokenizer

from .checkpoint_layouts import (
    openai_clip_image_reference,
    openai_clip_state,
    openai_clip_text_reference,
    tiny_bpe_file,
)
from .conftest import ARCHIVE

TEXTS = ["pleural effusion", "no effusion", "cardiomegaly.", "no pleural effusion or cardiomegaly"]
TINY = {"text_width": 128, "text_layers": 2, "context": 77, "vision_width": 128, "vision_layers": 2, "patch": 8,
        "grid": 4, "embed_dim": 64}  # 2 heads per tower (OpenAI: width / 64), 32 px images


def _images(n=3):
    return sorted((ARCHIVE / "nih").rglob("*.jpg"))[:n]


@pytest.fixture(scope="module")
def bpe(module_tmp):
    return tiny_bpe_file(module_tmp.mktemp("bpe") / "bpe_tiny.txt.gz")


@pytest.fixture(scope="module", params=[False, True], ids=["fp32", "fp16"])
def chexzero(request, bpe, module_tmp):
    vocab = len(clip_tokenizer(str(bpe))[0])
    state = openai_clip_state(vocab=vocab, gen=torch.Generator().manual_seed(22), fp16=request.param, **TINY)
    root = module_tmp.mktemp("chexzero")
    torch.save(state, root / "best_64_5e-05_original_22000_0.864.pt")
    report = import_chexzero(root / "best_64_5e-05_original_22000_0.864.pt", root / "model", tokenizer=str(bpe))
    return state, report, root


def _openai_tokens(model, texts):
    """The same token ids laid out as clip.tokenize does: zero-padded to the context length."""
    enc = model.tokenize(texts)
    out = torch.zeros(len(texts), model.card.text.max_length, dtype=torch.long)
    for i, (ids, mask) in enumerate(zip(enc["input_ids"], enc["attention_mask"], strict=True)):
        real = ids[mask.bool()]
        out[i, : len(real)] = real
    return out


def test_imported_chexzero_embeds_like_openai_clip_over_the_checkpoint(chexzero):
    state, report, root = chexzero
    model = load_model_dir(root / "model")
    assert model.card.family == "hf-clip" and type(model.native).__name__ == "CLIPModel"
    pixels = torch.stack([model.preprocess(p) for p in _images()])
    expected = torch.nn.functional.normalize(openai_clip_image_reference(state, pixels), dim=-1)
    np.testing.assert_allclose(model.encode_pixels(pixels), expected.numpy(), atol=2e-5)
    tokens = _openai_tokens(model, TEXTS)
    assert tokens.argmax(-1).tolist() == [int(m.sum()) - 1 for m in model.tokenize(TEXTS)["attention_mask"]]
    expected_text = torch.nn.functional.normalize(openai_clip_text_reference(state, tokens), dim=-1)
    np.testing.assert_allclose(model.encode_texts(TEXTS), expected_text.numpy(), atol=2e-5)
    assert model.native.logit_scale.item() == pytest.approx(4.2)


def test_the_reference_would_notice_a_missplit_attention(chexzero):
    """Swapping the q and k thirds of one in_proj changes the reference (the comparison above can fail)."""
    state, _, _ = chexzero
    key = "visual.transformer.resblocks.1.attn.in_proj_weight"
    q, k, v = state[key].chunk(3)
    swapped = {**state, key: torch.cat([k, q, v])}
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    diff = openai_clip_image_reference(state, pixels) - openai_clip_image_reference(swapped, pixels)
    assert diff.abs().max() > 1e-3


def test_card_holds_chexzero_preprocessing_and_provenance(chexzero):
    state, report, root = chexzero
    card = json.loads((root / "model" / "model.json").read_text())
    image = card["image"]
    assert (image["resize"], image["interpolation"], image["input_size"]) == ("chexzero_letterbox", "bicubic", 32)
    assert image["pad_size"] == 320
    assert image["mean"] == [CHEXZERO_MEAN] * 3 and image["std"] == [CHEXZERO_STD] * 3
    assert card["text"]["max_length"] == 77 and card["scoring"]["rule"] == "softmax"
    prov = card["provenance"]
    pt = root / "best_64_5e-05_original_22000_0.864.pt"
    assert prov["source_sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest() == report.sha256
    assert "Commons Clause" in prov["licence"] and prov["source_file"] == pt.name
    assert report.tensors == len(state) and report.dropped == []
    assert (root / "model" / "config.json").is_file() and (root / "model" / "preprocessor_config.json").is_file()


def test_the_directory_also_loads_with_transformers_alone(chexzero):
    from transformers import CLIPModel

    state, _, root = chexzero
    native = CLIPModel.from_pretrained(root / "model")
    openai = state["visual.proj"].float().t()
    assert torch.equal(native.visual_projection.weight, openai)


@pytest.mark.parametrize("key", ["visual.transformer.resblocks.0.attn.in_proj_bias", "text_projection",
                                 "transformer.resblocks.1.mlp.c_proj.weight", "visual.class_embedding"])
def test_a_removed_weight_is_refused_by_name(bpe, tmp_path, key):
    state = openai_clip_state(vocab=len(clip_tokenizer(str(bpe))[0]), gen=torch.Generator().manual_seed(3), **TINY)
    del state[key]
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        import_chexzero(tmp_path / "cut.pt", tmp_path / "out", tokenizer=str(bpe))
    assert key in info.value.reason and info.value.missing == [key]
    assert not (tmp_path / "out").exists()


def test_a_renamed_or_extra_weight_is_refused_by_name(bpe, tmp_path):
    state = openai_clip_state(vocab=len(clip_tokenizer(str(bpe))[0]), gen=torch.Generator().manual_seed(3), **TINY)
    state["visual.transformer.resblocks.0.attn.in_proj_weight_renamed"] = state.pop(
        "visual.transformer.resblocks.0.attn.in_proj_weight")
    state["input_resolution"] = torch.tensor(224)
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        import_chexzero(tmp_path / "renamed.pt", tmp_path / "out", tokenizer=str(bpe))
    assert info.value.missing == ["visual.transformer.resblocks.0.attn.in_proj_weight"]
    assert info.value.unexpected == ["input_resolution", "visual.transformer.resblocks.0.attn.in_proj_weight_renamed"]


def test_a_tokenizer_of_another_size_is_refused(bpe, tmp_path):
    state = openai_clip_state(vocab=600, gen=torch.Generator().manual_seed(3), **TINY)
    torch.save(state, tmp_path / "vocab.pt")
    with pytest.raises(ModelError, match="tokenizer has 538 tokens, the checkpoint's token_embedding 600"):
        import_chexzero(tmp_path / "vocab.pt", tmp_path / "out", tokenizer=str(bpe))


def test_the_bpe_tokenizer_reproduces_openai_clip_tokenization():
    """Built from the BPE file open_clip ships (CheXzero's own file), ids equal OpenAI's SimpleTokenizer."""
    from open_clip.tokenizer import SimpleTokenizer

    tok, source = clip_tokenizer(None)
    simple = SimpleTokenizer()
    texts = ["Pleural Effusion.", "no acute cardiopulmonary process", "Left-sided  PTX, s/p chest tube; ~2cm apical.",
             "It's the patient's 2nd x-ray (AP view).", "Cardiomegaly!!", "café naïve 10% ≥ 3"]
    for text in texts:
        assert tok(text)["input_ids"] == [simple.sot_token_id, *simple.encode(text), simple.eot_token_id], text
    assert len(tok) == 49408 and tok.model_max_length == 77 and "BPE" in source


def test_unreachable_hub_tokenizer_says_what_to_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        clip_tokenizer("openai/clip-vit-base-patch32")
    assert "https://huggingface.co/openai/clip-vit-base-patch32" in info.value.hint
    assert "vocab.json" in info.value.hint and "merges.txt" in info.value.hint and "--tokenizer" in info.value.hint
