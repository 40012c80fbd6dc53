"""Native dual encoders as cxrtool models: Hugging Face CLIP / SigLIP and open_clip.

A public medical image-text model (MedSigLIP, XrayCLIP/XraySigLIP, BiomedCLIP, a converted
CheXzero) runs through the classes its authors trained it with (``CLIPModel``, ``SiglipModel``,
open_clip's ``CLIP``/``CustomTextCLIP``), wrapped as a :class:`~cxrtool.model.dual.DualEncoder`
so embed, index, search, classify and evaluate use it unchanged. What the wrapper needs to know
(input size, resize rule, normalisation, text length and padding, scoring rule) is read from the
model's own processor / open_clip config into a :class:`~cxrtool.model.card.ModelCard`; from then
on the card is the contract, and ``model/transform.py`` reproduces the processor on tensors.

Directory layouts (each also loads with its own library):

* ``hf-clip`` / ``hf-siglip``: ``config.json``, ``model.safetensors`` (or sharded / ``.bin``),
  ``preprocessor_config.json`` and the tokenizer files, as ``save_pretrained`` writes them.
* ``open_clip``: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``), the weights
  (``open_clip_model.safetensors`` or the hub's ``open_clip_pytorch_model.bin``) and, for a Hugging
  Face text tower, its tokenizer files; cxrtool adds that tower's ``config.json`` under ``text/``
  so the directory needs no hub (BiomedCLIP's config names ``microsoft/BiomedNLP-...`` otherwise).

A directory written by :func:`~cxrtool.model.directory.save_model_dir` also holds ``model.json``.
Weights load strictly: a missing, unexpected or wrong-shaped tensor is refused by name.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrtool.errors import ModelError, WeightMismatchError
from cxrtool.model.card import ImageSpec, ModelCard, ScoringSpec, TextSpec
from cxrtool.model.dual import DualEncoder
from cxrtool.model.sources import quiet_transformers

HF_CLIP, HF_SIGLIP, OPEN_CLIP = "hf-clip", "hf-siglip", "open_clip"
HF_MODEL_TYPES = {"clip": HF_CLIP, "siglip": HF_SIGLIP}
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
# Weight files open_clip's own loader looks for, in its order of preference.
OPEN_CLIP_WEIGHT_NAMES = (OPEN_CLIP_WEIGHTS, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                          "open_clip_pytorch_model.pth")
OPEN_CLIP_TEXT_DIR = "text"  # the HF text tower's config, so the directory needs no hub
HUB_PREFIX = "hf-hub:"  # open_clip's spelling of a hub model; plain names are transformers models

# Hugging Face `resample` codes (PIL's) -> the interpolation transform.py applies.
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
# Stanford's XrayCLIP/XraySigLIP name the training loss, not the architecture: an XrayCLIP on a
# SigLIP backbone was trained with CLIP's softmax loss. Repository-name pattern -> scoring rule.
SCORING_BY_NAME = ((re.compile(r"(^|/)XrayCLIP__", re.IGNORECASE), "softmax"),)


def _pooled(out: Any) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features, 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _scalar(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.reshape(())


class _NativeScoring(DualEncoder):
    """Temperature and bias read from the native model's own parameters (CLIP, SigLIP, open_clip)."""

    def scale(self) -> torch.Tensor:
        return self.native.logit_scale.exp().reshape(())

    def bias(self) -> torch.Tensor:
        bias = _scalar(getattr(self.native, "logit_bias", None))
        return bias if bias is not None else super().bias()


class HFDualEncoder(_NativeScoring):
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


class OpenClipDualEncoder(_NativeScoring):
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


# ----------------------------------------------------------------------------------- detection


def _model_type(directory: Path) -> str:
    """``model_type`` of a transformers config.json ("" if none or unreadable)."""
    try:
        value = json.loads((directory / "config.json").read_text()).get("model_type", "")
    except (OSError, json.JSONDecodeError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def detect_family(directory: Path) -> str | None:
    """The family of a native model directory from its config files (None: not one we know)."""
    if (directory / OPEN_CLIP_CONFIG).is_file():
        return OPEN_CLIP
    return HF_MODEL_TYPES.get(_model_type(directory))


def unsupported_dir_error(directory: Path) -> ModelError:
    model_type = _model_type(directory)
    what = f"a Hugging Face {model_type!r} model" if model_type else "no model cxrtool knows"
    return ModelError(f"{directory}: {what} (need model.json, a CLIP/SigLIP config.json or {OPEN_CLIP_CONFIG})",
                      "supported: cxrtool model directories, transformers CLIPModel/SiglipModel and open_clip "
                      "directories; see docs/models.md")


# ------------------------------------------------------------------------------ Hugging Face


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
    bias = _scalar(getattr(native, "logit_bias", None))
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
            raise unsupported_dir_error(directory)
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


# ------------------------------------------------------------------------------------ open_clip


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
    bias = _scalar(getattr(native, "logit_bias", None))
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


def load_native_dir(directory: Path, card: ModelCard | None = None, name: str = "") -> DualEncoder:
    """Load a native (non-cxrtool-family) model directory, with ``card`` if it has model.json."""
    family = card.family if card is not None else detect_family(directory)
    if family in (HF_CLIP, HF_SIGLIP):
        return load_hf_dir(directory, card, name)
    if family == OPEN_CLIP:
        return load_open_clip_dir(directory, card, name)
    raise unsupported_dir_error(directory)


# ------------------------------------------------------------------------------------------ hub

HF_FILES = ["config.json", "preprocessor_config.json", "tokenizer*", "special_tokens_map.json", "vocab*",
            "merges.txt", "*.model", "added_tokens.json", "model.safetensors", "model-*.safetensors",
            "model.safetensors.index.json"]
HF_BIN_FILES = ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]
OPEN_CLIP_FILES = [OPEN_CLIP_CONFIG, "open_clip_model.safetensors", "open_clip_pytorch_model.*", "tokenizer*",
                   "special_tokens_map.json", "vocab*", "merges.txt", "*.model"]


def hub_download_hint(name: str, target: Path) -> str:
    repo = name.removeprefix(HUB_PREFIX)
    return (f"download it where the hub is reachable: `hf download {repo} --local-dir {target}` (gated models: accept "
            f"the licence on the model's hub page and `hf auth login` first), then pass --model {target}")


def fetch_hub_model(name: str, target: Path) -> Path:
    """The local snapshot of hub model ``name`` (from the Hugging Face cache, else downloaded).

    Any failure (offline, gated, unknown, no network) becomes one ModelError whose hint says what
    to download and where to put it (``target``, a folder under the models home).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo = name.removeprefix(HUB_PREFIX)
    patterns = OPEN_CLIP_FILES if name.startswith(HUB_PREFIX) else HF_FILES
    try:
        path = Path(snapshot_download(repo, allow_patterns=patterns))
        if not name.startswith(HUB_PREFIX) and not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(repo, allow_patterns=patterns + HF_BIN_FILES))
    except GatedRepoError:
        why = "is gated (its licence must be accepted on the hub, then `hf auth login`)"
    except RepositoryNotFoundError:
        why = "is not on the Hugging Face hub (or is private)"
    except LocalEntryNotFoundError:
        why = "is not in the local Hugging Face cache and the hub cannot be reached (offline)"
    except Exception as exc:  # network and HTTP errors of every kind: one line for the user
        why = f"could not be fetched ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    else:
        return path
    raise ModelError(f"model {name!r} {why}", hub_download_hint(name, target))
