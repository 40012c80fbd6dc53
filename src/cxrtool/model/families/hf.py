"""The ``hf-clip`` / ``hf-siglip`` families: a transformers ``CLIPModel`` / ``SiglipModel`` as a cxrtool model.

A public medical image-text model (MedSigLIP, XrayCLIP/XraySigLIP, a converted CheXzero) runs through
the class its authors trained it with, wrapped as a :class:`~cxrtool.model.dual.DualEncoder` so
embed, index, search, classify and evaluate use it unchanged. What the wrapper needs to know (input
size, resize rule, normalisation, text length and padding, scoring rule) is read from the model's own
processor and config into a :class:`~cxrtool.model.card.ModelCard`; from then on the card is the
contract, and ``model/transform.py`` reproduces the processor on tensors.

Layout: ``config.json``, ``model.safetensors`` (or sharded / ``.bin``), ``preprocessor_config.json``
and the tokenizer files, as ``save_pretrained`` writes them (and ``model.json`` once cxrtool saved it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrtool.errors import ModelError, WeightMismatchError
from cxrtool.model.card import ImageSpec, ModelCard, ScoringSpec, TextSpec
from cxrtool.model.dual import DualEncoder
from cxrtool.model.families.base import (
    Family,
    ModelSummary,
    NativeScoring,
    read_json,
    scalar,
    size_of,
    write_model_files,
)
from cxrtool.model.sources import quiet_transformers

HF_CLIP, HF_SIGLIP = "hf-clip", "hf-siglip"
HF_MODEL_TYPES = {"clip": HF_CLIP, "siglip": HF_SIGLIP}

# Hugging Face `resample` codes (PIL's) -> the interpolation transform.py applies.
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
# Stanford's XrayCLIP/XraySigLIP name the training loss, not the architecture: an XrayCLIP on a
# SigLIP backbone was trained with CLIP's softmax loss. Repository-name pattern -> scoring rule.
SCORING_BY_NAME = ((re.compile(r"(^|/)XrayCLIP__", re.IGNORECASE), "softmax"),)


def _pooled(out: Any) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features, 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFDualEncoder(NativeScoring):
    """A transformers ``CLIPModel`` / ``SiglipModel`` behind the DualEncoder interface."""

    def __init__(self, card: ModelCard, native: nn.Module, tokenizer: Any, image_processor: Any = None) -> None:
        nn.Module.__init__(self)  # the towers are the native model's own, not DualEncoder's
        self.card = card
        self.native = native
        self.tokenizer = tokenizer
        self.image_processor = image_processor  # kept to write the directory back out

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(_pooled(self.native.get_image_features(pixel_values=pixels)), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask if self.card.text.attention_mask else None
        return F.normalize(_pooled(self.native.get_text_features(input_ids=input_ids, attention_mask=mask)), dim=-1)

    def save_native(self, directory: Path) -> None:
        self.native.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(directory)



def model_type(directory: Path) -> str:
    """``model_type`` of a transformers config.json ("" if none or unreadable)."""
    value = (read_json(directory / "config.json") or {}).get("model_type", "")
    return value if isinstance(value, str) else ""


def detect(directory: Path) -> bool:
    return model_type(directory) in HF_MODEL_TYPES


def _size_field(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def image_spec_from_processor(processor: Any, feature_dim: int) -> ImageSpec:
    """A Hugging Face image processor's eval transform as a card ImageSpec (refused if transform.py
    cannot reproduce it)."""
    name = type(processor).__name__
    size, crop = processor.size, getattr(processor, "crop_size", None)
    shortest, height, width = (_size_field(size, k) for k in ("shortest_edge", "height", "width"))
    do_crop = bool(getattr(processor, "do_center_crop", False))
    if not getattr(processor, "do_resize", True):
        raise ModelError(f"{name} does not resize; cxrtool needs a fixed input size")
    if shortest and not (height or width):
        crop_h, crop_w = (_size_field(crop, "height"), _size_field(crop, "width")) if crop is not None else (None, None)
        if not do_crop or crop_h != shortest or crop_w != shortest:
            raise ModelError(f"{name}: short side {shortest} with crop {crop_h}x{crop_w} is not supported",
                             "cxrtool reproduces a short-side resize followed by a square crop of the same size")
        rule, input_size = "shortest_edge_center_crop", shortest
    elif height and height == width and not do_crop:
        rule, input_size = "squash", height
    else:
        raise ModelError(f"{name}: size {size} (centre crop {do_crop}) is not a square cxrtool can reproduce")
    resample = int(getattr(processor, "resample", 2))
    if resample not in RESAMPLE:
        raise ModelError(f"{name}: resample={resample} is not supported", f"supported: {sorted(RESAMPLE)}")
    if not getattr(processor, "do_rescale", True) or abs(float(processor.rescale_factor) - 1 / 255) > 1e-9:
        raise ModelError(f"{name}: pixels are not rescaled by 1/255; cxrtool feeds [0, 1] images")
    if getattr(processor, "do_normalize", True):
        mean, std = processor.image_mean, processor.image_std
        mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(v) for v in mean]
        std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(v) for v in std]
    else:
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return ImageSpec(feature_dim=feature_dim, input_size=input_size, resize=rule, interpolation=RESAMPLE[resample],
                     mean=mean, std=std)


def _scoring_rule(family: str, name: str, has_bias: bool) -> str:
    for pattern, rule in SCORING_BY_NAME:
        if pattern.search(name):
            return rule
    return "sigmoid" if family == HF_SIGLIP and has_bias else "softmax"


def card_from_hf(native: nn.Module, processor: Any, tokenizer: Any, name: str) -> ModelCard:
    """The card of a transformers CLIP/SigLIP model, from its config, processor and tokenizer."""
    family = HF_MODEL_TYPES[native.config.model_type]
    text_cfg, vision_cfg = native.config.text_config, native.config.vision_config
    max_length = int(text_cfg.max_position_embeddings)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < max_length:
        max_length = tok_max
    siglip = family == HF_SIGLIP
    embed_dim = int(getattr(native.config, "projection_dim", 0) or getattr(text_cfg, "projection_size", 0)
                    or vision_cfg.hidden_size)
    bias = scalar(getattr(native, "logit_bias", None))
    scoring = ScoringSpec(rule=_scoring_rule(family, name, bias is not None),
                          logit_scale=round(float(native.logit_scale.detach().exp().reshape(())), 6),
                          logit_bias=None if bias is None else round(float(bias.detach()), 6))
    card = ModelCard(
        image=image_spec_from_processor(processor, int(vision_cfg.hidden_size)),
        # SigLIP was trained on text padded to max_length with no attention mask, pooled at the
        # last position (big_vision); CLIP's causal mask makes its padding irrelevant.
        text=TextSpec(feature_dim=int(text_cfg.hidden_size), max_length=max_length, pooling="native", source=name,
                      padding="max_length" if siglip else "longest", attention_mask=not siglip),
        embed_dim=embed_dim, family=family, scoring=scoring, projection_bias=False,
        provenance={"name": name, "native_class": type(native).__name__},
    )
    card.validate()
    return card



def wrap_hf_model(native: nn.Module, image_processor: Any, tokenizer: Any, name: str = "") -> HFDualEncoder:
    """An in-memory transformers CLIPModel/SiglipModel (+ its processor and tokenizer) as a cxrtool
    model, e.g. a converted checkpoint about to be saved with ``save_model_dir``."""
    if getattr(native.config, "model_type", "") not in HF_MODEL_TYPES:
        raise ModelError(f"{type(native).__name__} is not a CLIP or SigLIP model", "see docs/models.md")
    return HFDualEncoder(card_from_hf(native, image_processor, tokenizer, name), native.eval(), tokenizer,
                         image_processor)


def load_hf_dir(directory: Path, card: ModelCard | None = None, name: str = "") -> HFDualEncoder:
    """A transformers CLIP/SigLIP directory; ``card`` (from model.json) overrides the derived one."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(directory)
        classes = {"clip": CLIPModel, "siglip": SiglipModel}
        if config.model_type not in classes:
            raise ModelError(f"{directory}: config.json holds a {config.model_type!r} model, not CLIP or SigLIP")
        native, info = classes[config.model_type].from_pretrained(
            directory, config=config, dtype=torch.float32, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        processor = AutoImageProcessor.from_pretrained(directory)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelError(f"cannot load the Hugging Face model in {directory}: {exc}".splitlines()[0],
                         "the directory needs config.json, the weights, preprocessor_config.json and the "
                         "tokenizer files (as `hf download NAME --local-dir DIR` fetches them)") from None
    missing, unexpected = sorted(info.get("missing_keys", ())), sorted(info.get("unexpected_keys", ()))
    if missing or unexpected:
        raise WeightMismatchError(missing, unexpected, str(directory))
    if info.get("mismatched_keys"):
        key = sorted(info["mismatched_keys"])[0]
        raise ModelError(f"{directory}: weight {key} has the wrong shape for its config.json")
    model = wrap_hf_model(native, processor, tokenizer, name or str(directory))
    if card is not None:
        model.card = card
    return model




def save(model: DualEncoder, directory: Path, card: ModelCard, changed_only: bool = False) -> None:
    """The native files (``save_pretrained``: the library reads them as they are) + model.json."""
    write_model_files(directory, card, model.save_native)


def describe(directory: Path, name: str) -> ModelSummary | None:
    """A `cxrtool models` row from config.json and preprocessor_config.json (no weights read)."""
    config = read_json(directory / "config.json")
    family = HF_MODEL_TYPES.get((config or {}).get("model_type", ""))
    if config is None or family is None:
        return None
    vision, text = config.get("vision_config", {}), config.get("text_config", {})
    processor = read_json(directory / "preprocessor_config.json") or {}
    embed = config.get("projection_dim") or text.get("projection_size") or vision.get("hidden_size")
    return ModelSummary(name, family, embed, size_of(processor.get("crop_size")) or size_of(processor.get("size"))
                        or size_of(vision.get("image_size")), _scoring_rule(family, name, family == HF_SIGLIP),
                        str(directory), note="no model.json yet")


FAMILY = Family(names=(HF_CLIP, HF_SIGLIP), detect=detect, load=load_hf_dir, save=save, describe=describe)
