"""Training configuration: one dataclass, presets, a TOML/YAML file and ``key=value`` overrides.

Precedence: dataclass defaults < ``preset`` < config file < overrides (CLI flags). The resolved
config is written next to the checkpoints (``config.json``) and into the model card's provenance,
and a resumed run must resolve to the same config (except the fields in ``RESUMABLE_CHANGES``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cxrtool.errors import CxrError
from cxrtool.model.sources import EFFNET_LITE0_PACKAGE, MINILM_PACKAGE

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ConfigError(CxrError):
    """A training config that cannot be used as given."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved with the run and in the model card)."""

    # --- model
    image_model: str = "efficientnet_lite0"  # any timm name
    image_weights: str | None = EFFNET_LITE0_PACKAGE  # package name, timm:NAME, hf:NAME or None (random)
    text_model: str = MINILM_PACKAGE  # HF hub name or local directory
    pooling: str | None = None  # cls | eos | mean; None: the text model's usual rule
    max_length: int = 128
    mean: list[float] | None = None  # image normalisation; None: the image weights' own
    std: list[float] | None = None
    image_feature: str = "pooled"  # pooled | halves (left/right image halves pooled apart: keeps the side)
    init_from: str | None = None  # an existing model directory to continue from
    embed_dim: int = 512
    input_size: int = 224
    # --- what trains
    freeze_text: bool = False
    freeze_image: bool = False
    freeze_text_layers: int = 0  # embeddings + the first N transformer layers
    freeze_image_layers: int = 0  # the first N parameter groups of timm's group_matcher (stem, stages...)
    # --- objective
    icl_weight: float = 1.0
    tcl_weight: float = 0.5
    false_negatives: bool = True  # drop same-meaning pairs (identical text / label set) from the negatives
    side_negatives: bool = False  # add each lateral text with left/right swapped as a hard negative
    side_weight: float = 1.0  # weight of the two-way "own text vs side-swapped text" term (with side_negatives)
    hflip_prob: float = 0.0  # horizontal flips; the text's sides are swapped with the image
    # Vectors the model writes: single | flip_pair (image + mirror image, text + side-swapped text;
    # see model/card.py) | auto (flip_pair when the model trains with flips, else single)
    embedding: str = "auto"
    max_negatives: int = 3  # negative sentences sampled per label-only training text
    # --- augmentation
    crop_scale: list[float] = field(default_factory=lambda: [0.7, 1.0])
    clahe_p: float = 0.5
    # --- optimisation
    epochs: int = 5
    batch_size: int = 32  # global: split over the processes of a torchrun job
    accum_steps: int = 1  # gradient accumulation with cached features (the contrastive batch stays whole)
    lr: float = 1e-4
    text_lr: float | None = None  # defaults to lr / 10 (pretrained language models move slowly)
    weight_decay: float = 1e-4
    warmup_epochs: float | None = None  # overrides warmup_fraction when set
    warmup_fraction: float = 0.05
    grad_clip: float = 5.0
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    # --- data
    cache_images: bool = True  # decode once into RAM (small sets); False: decode in the workers each epoch
    workers: int = 0
    # --- run
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    checkpoint_every: int = 200  # steps; also at every epoch end
    log_every: int = 10
    select_by: str = "val_loss"  # val_loss (CXR-CLIP) | auroc | recall
    changed_only: bool = False  # save only weights that differ from the base sources
    max_steps: int | None = None  # cap per epoch (smoke runs)

    def validate(self) -> None:
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"amp={self.amp!r}: use auto, bf16, fp16 or off")
        if self.select_by not in ("val_loss", "auroc", "recall"):
            raise ConfigError(f"select_by={self.select_by!r}: use val_loss, auroc or recall")
        if self.batch_size < 2 * self.accum_steps:
            raise ConfigError(f"batch_size {self.batch_size} is too small for accum_steps {self.accum_steps}")
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"batch_size {self.batch_size} must be a multiple of accum_steps {self.accum_steps}")
        if self.embedding not in ("auto", "single", "flip_pair"):
            raise ConfigError(f"embedding={self.embedding!r}: use auto, single or flip_pair")
        if len(self.crop_scale) != 2:
            raise ConfigError("crop_scale takes two numbers, e.g. [0.7, 1.0]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved_embedding(self) -> str:
        """``auto``: flip_pair for a model that learns from flips (it has seen mirrored images with
        side-swapped texts), single otherwise."""
        if self.embedding != "auto":
            return self.embedding
        return "flip_pair" if self.hflip_prob > 0 else "single"


# Fields a resumed run may change (where and how fast it runs, not what it computes).
RESUMABLE_CHANGES = {"device", "threads", "workers", "log_every", "checkpoint_every", "cache_images"}

PRESETS: dict[str, dict[str, Any]] = {
    # CXR-CLIP (REFERENCE.md §1): ResNet-50 or Swin-Tiny + Bio_ClinicalBERT, [SEP] pooling, 512-d.
    "cxr-clip-r50": {
        "image_model": "resnet50", "image_weights": "timm:resnet50.tv_in1k",
        "text_model": "emilyalsentzer/Bio_ClinicalBERT", "pooling": "eos", "max_length": 256,
        "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "embed_dim": 512, "input_size": 224,
        "batch_size": 128, "lr": 5e-5, "text_lr": 5e-5, "weight_decay": 1e-4, "epochs": 15, "warmup_epochs": 1.0,
        "icl_weight": 1.0, "tcl_weight": 0.5, "crop_scale": [0.8, 1.0], "clahe_p": 0.5,
    },
    "cxr-clip-swint": {
        "image_model": "swin_tiny_patch4_window7_224", "image_weights": "timm:swin_tiny_patch4_window7_224",
        "text_model": "emilyalsentzer/Bio_ClinicalBERT", "pooling": "eos", "max_length": 256,
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "embed_dim": 512, "input_size": 224,
        "batch_size": 128, "lr": 5e-5, "text_lr": 5e-5, "weight_decay": 1e-4, "epochs": 15, "warmup_epochs": 1.0,
        "icl_weight": 1.0, "tcl_weight": 0.5, "crop_scale": [0.8, 1.0], "clahe_p": 0.5,
    },
}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``) file -> dict; a ``[train]`` table is accepted."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"{path}: YAML needs PyYAML",
                                  "pip install pyyaml, or write the config as TOML") from None
            data = yaml.safe_load(text) or {}
        else:
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib
            data = tomllib.loads(text)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{path}: cannot parse ({exc})".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings")
    return data.get("train", data)


def _coerce(name: str, value: Any, like: Any) -> Any:
    """A ``key=value`` string from the command line -> the field's type (JSON for lists/null)."""
    if not isinstance(value, str):
        return value
    if value.lower() in ("none", "null"):
        return None
    if isinstance(like, bool):
        if value.lower() in ("true", "1", "yes", "on"):
            return True
        if value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name}={value!r}: expected true or false")
    try:
        if isinstance(like, int):
            return int(value)
        if isinstance(like, float):
            return float(value)
        if isinstance(like, list):
            return json.loads(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected a {type(like).__name__}") from None
    if like is None:  # optional field: numbers stay numbers
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < preset < file < overrides -> a validated TrainConfig; unknown keys are errors."""
    defaults = TrainConfig()
    known = {f.name: getattr(defaults, f.name) for f in fields(TrainConfig)}
    merged: dict[str, Any] = {}
    layers = []
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}", f"choose one of {', '.join(PRESETS)}")
        layers.append(("preset " + preset, PRESETS[preset]))
    if config_file:
        file_data = read_config_file(config_file)
        if "preset" in file_data and not preset:
            name = file_data.pop("preset")
            if name not in PRESETS:
                raise ConfigError(f"{config_file}: unknown preset {name!r}", f"choose one of {', '.join(PRESETS)}")
            layers.append(("preset " + name, PRESETS[name]))
        file_data.pop("preset", None)
        layers.append((str(config_file), file_data))
    layers.append(("overrides", overrides or {}))
    for origin, layer in layers:
        for key, value in layer.items():
            key = key.replace("-", "_")
            if key not in known:
                raise ConfigError(f"{origin}: unknown setting {key!r}",
                                  "see `cxrtool train --help` or docs/training.md")
            merged[key] = _coerce(key, value, known[key])
    cfg = dataclasses.replace(defaults, **merged)
    cfg.validate()
    return cfg


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """``["lr=3e-4", "freeze_text=true"]`` -> dict (values coerced later, against the field types)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE", "e.g. --set lr=3e-4")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Settings that differ between a checkpoint's config and this run's (resume must not change them)."""
    return sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
