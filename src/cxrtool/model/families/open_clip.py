"""The ``open_clip`` family: an open_clip ``CLIP`` / ``CustomTextCLIP`` (e.g. BiomedCLIP) as a cxrtool model.

Layout: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``), the weights
(``open_clip_model.safetensors`` or the hub's ``open_clip_pytorch_model.bin``) and, for a Hugging
Face text tower, its tokenizer files; cxrtool adds that tower's ``config.json`` under ``text/`` so
the directory needs no hub (BiomedCLIP's config names ``microsoft/BiomedNLP-...`` otherwise).
The card is derived from open_clip's own preprocessing config; weights load strictly.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrtool.errors import ModelError
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
from cxrtool.model.hub import OPEN_CLIP_CONFIG
from cxrtool.model.sources import quiet_transformers

OPEN_CLIP = "open_clip"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
# Weight files open_clip's own loader looks for, in its order of preference.
OPEN_CLIP_WEIGHT_NAMES = (OPEN_CLIP_WEIGHTS, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                          "open_clip_pytorch_model.pth")
OPEN_CLIP_TEXT_DIR = "text"  # the HF text tower's config, so the directory needs no hub


class OpenClipDualEncoder(NativeScoring):
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` (e.g. BiomedCLIP) behind the DualEncoder interface."""

    def __init__(self, card: ModelCard, native: nn.Module, tokenizer: Any, config: dict[str, Any]) -> None:
        nn.Module.__init__(self)
        self.card = card
        self.native = native
        self.tokenizer = tokenizer
        self.open_clip_config = config  # {"model_cfg": ..., "preprocess_cfg": ...} as the model came

    def tokenize(self, texts: list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
        """open_clip's tokenizer pads to the context length; its towers mask the pads themselves."""
        ids = self.tokenizer(list(texts), context_length=self.card.text.max_length)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.native.encode_image(pixels), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.native.encode_text(input_ids), dim=-1)

    def save_native(self, directory: Path) -> None:
        from safetensors.torch import save_file

        (directory / OPEN_CLIP_CONFIG).write_text(json.dumps(self.open_clip_config, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.native.state_dict().items()}
        save_file(state, str(directory / OPEN_CLIP_WEIGHTS), metadata={"format": "pt"})
        hf_tokenizer = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps one
        if hf_tokenizer is not None and hasattr(hf_tokenizer, "save_pretrained"):
            hf_tokenizer.save_pretrained(directory)
        transformer = getattr(getattr(self.native, "text", None), "transformer", None)
        if transformer is not None and hasattr(transformer, "config"):
            transformer.config.save_pretrained(directory / OPEN_CLIP_TEXT_DIR)



def detect(directory: Path) -> bool:
    return (directory / OPEN_CLIP_CONFIG).is_file()


def _open_clip_weights(directory: Path) -> Path:
    for name in OPEN_CLIP_WEIGHT_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise ModelError(f"{directory}: no open_clip weights ({', '.join(OPEN_CLIP_WEIGHT_NAMES[:3])})",
                     "copy the whole model directory (open_clip would silently start from random weights)")


def _preprocess_cfg(config: dict[str, Any], native: nn.Module) -> dict[str, Any]:
    """open_clip's eval preprocessing: its defaults, the config's overrides, the tower's size."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = merge_preprocess_dict(asdict(PreprocessCfg()), config.get("preprocess_cfg", {}))
    size = getattr(getattr(native, "visual", None), "image_size", None)
    if size is not None:
        cfg["size"] = size
    return cfg


def image_spec_from_open_clip(cfg: dict[str, Any], feature_dim: int) -> ImageSpec:
    size = cfg["size"]
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise ModelError(f"open_clip image size {size} is not square; cxrtool needs a square input")
        size = size[0]
    rules = {"shortest": "torchvision_center_crop", "squash": "squash", "longest": "letterbox"}
    if cfg.get("resize_mode", "shortest") not in rules:
        raise ModelError(f"open_clip resize_mode {cfg.get('resize_mode')!r} is not supported", f"use one of {rules}")
    if cfg.get("interpolation", "bicubic") not in ("bicubic", "bilinear"):
        raise ModelError(f"open_clip interpolation {cfg.get('interpolation')!r} is not supported at eval time")
    if cfg.get("resize_mode") == "longest" and cfg.get("fill_color", 0) != 0:
        raise ModelError("open_clip 'longest' resize with a non-black fill is not supported")
    return ImageSpec(feature_dim=feature_dim, input_size=int(size), resize=rules[cfg.get("resize_mode", "shortest")],
                     interpolation=cfg.get("interpolation", "bicubic"), mean=[float(v) for v in cfg["mean"]],
                     std=[float(v) for v in cfg["std"]])


def card_from_open_clip(native: nn.Module, config: dict[str, Any], name: str) -> ModelCard:
    model_cfg = config["model_cfg"]
    text_cfg = model_cfg.get("text_cfg", {})
    preprocess = _preprocess_cfg(config, native)
    bias = scalar(getattr(native, "logit_bias", None))
    scoring = ScoringSpec(rule="sigmoid" if bias is not None else "softmax",
                          logit_scale=round(float(native.logit_scale.detach().exp().reshape(())), 6),
                          logit_bias=None if bias is None else round(float(bias.detach()), 6))
    vision_width = int(model_cfg.get("vision_cfg", {}).get("width", 0) or 0)
    text_width = int(getattr(getattr(getattr(native, "text", None), "config", None), "hidden_size", 0)
                     or text_cfg.get("width", 0) or 0)
    card = ModelCard(
        image=image_spec_from_open_clip(preprocess, vision_width),
        text=TextSpec(feature_dim=text_width, max_length=int(text_cfg.get("context_length", 77)), pooling="native",
                      source=text_cfg.get("hf_model_name", "") or name, padding="max_length"),
        embed_dim=int(model_cfg["embed_dim"]), family=OPEN_CLIP, scoring=scoring, projection_bias=False,
        provenance={"name": name, "native_class": type(native).__name__},
    )
    card.validate()
    return card


def load_open_clip_dir(directory: Path, card: ModelCard | None = None, name: str = "") -> OpenClipDualEncoder:
    """An open_clip directory (``open_clip_config.json`` + weights + tokenizer files), strictly."""
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP

    quiet_transformers()
    try:
        config = json.loads((directory / OPEN_CLIP_CONFIG).read_text())
        model_cfg = copy.deepcopy(config["model_cfg"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelError(f"{directory / OPEN_CLIP_CONFIG}: not a valid open_clip config ({exc})") from None
    if "multimodal_cfg" in model_cfg:
        raise ModelError(f"{directory}: open_clip CoCa models are not supported", "see docs/models.md")
    weights = _open_clip_weights(directory)
    text_cfg = model_cfg.setdefault("text_cfg", {})
    hf_text = bool(text_cfg.get("hf_model_name"))
    if hf_text:
        local = directory / OPEN_CLIP_TEXT_DIR
        if (local / "config.json").is_file():
            text_cfg["hf_model_name"] = str(local)
        text_cfg["hf_model_pretrained"] = False  # the checkpoint holds the text tower's weights
    custom_text = bool(model_cfg.pop("custom_text", False)) or hf_text
    try:
        native = (CustomTextCLIP if custom_text else CLIP)(**model_cfg)
    except (OSError, ValueError) as exc:
        tower = config["model_cfg"]["text_cfg"].get("hf_model_name", "")
        raise ModelError(f"cannot build the open_clip model of {directory}: {exc}".splitlines()[0],
                         f"its text tower's config comes from {tower!r}: put that repository's config.json in "
                         f"{directory / OPEN_CLIP_TEXT_DIR}/ (`hf download {tower} config.json --local-dir "
                         f"{directory / OPEN_CLIP_TEXT_DIR}`)" if tower else "see docs/models.md") from None
    try:
        open_clip.load_checkpoint(native, str(weights), strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{weights}: weights do not fit {OPEN_CLIP_CONFIG}: {exc}".splitlines()[0],
                         "the weights and the config come from different models; re-download the directory") from None
    native.eval()
    built = card_from_open_clip(native, config, name or str(directory))
    card = card or built
    try:
        tokenizer = open_clip.get_tokenizer(f"local-dir:{directory}", context_length=card.text.max_length)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the open_clip tokenizer of {directory}: {exc}".splitlines()[0],
                         "an open_clip directory with a Hugging Face text tower needs its tokenizer files") from None
    return OpenClipDualEncoder(card, native, tokenizer, config)




def save(model: DualEncoder, directory: Path, card: ModelCard, changed_only: bool = False) -> None:
    """open_clip's own files (config, safetensors weights, tokenizer, text tower config) + model.json."""
    write_model_files(directory, card, model.save_native)


def describe(directory: Path, name: str) -> ModelSummary | None:
    """A `cxrtool models` row from open_clip_config.json (no weights read)."""
    oc = read_json(directory / OPEN_CLIP_CONFIG)
    if oc is None:
        return None
    cfg = oc.get("model_cfg", {})
    pre = oc.get("preprocess_cfg", {})
    sigmoid = cfg.get("init_logit_bias") is not None
    return ModelSummary(name, OPEN_CLIP, cfg.get("embed_dim"),
                        size_of(pre.get("size")) or size_of(cfg.get("vision_cfg", {}).get("image_size")),
                        "sigmoid" if sigmoid else "softmax", str(directory), note="no model.json yet")


FAMILY = Family(names=(OPEN_CLIP,), detect=detect, load=load_open_clip_dir, save=save, describe=describe)
