"""Hugging Face image towers (CXR-CLIP's Swin-T): rebuilt from the config kept in a model directory.

A card whose ``image.backend`` is "hf" has its tower's ``config.json`` in the directory's ``image/``;
the weights live in ``model.safetensors`` with every other tensor, so rebuilding needs no hub.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from cxrtool.errors import ModelError
from cxrtool.model.sources import quiet_transformers


def build_hf_image_tower(config_dir: Path) -> nn.Module:
    """A randomly initialised HF vision model from ``config_dir`` (its weights come from the caller)."""
    from transformers import AutoConfig, AutoModel

    quiet_transformers()
    try:
        return AutoModel.from_config(AutoConfig.from_pretrained(config_dir))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot rebuild the image tower from {config_dir}: {exc}".splitlines()[0],
                         "copy the whole model directory (its image/config.json included)") from None
