"""The model families, as data: each module holds one family's detect / load / save / describe.

``cxrtool`` (timm or HF image tower + HF text tower; what `cxrtool train` and the importers write),
``hf`` (transformers CLIPModel / SiglipModel: ``hf-clip``, ``hf-siglip``) and ``open_clip``. A
checkpoint imported with `cxrtool import` is written as a directory of one of these (CXR-CLIP:
``cxrtool``; CheXzero: ``hf-clip``), so imported models load through the same doors. The seed
models whose architectures are their own (``biovil``, ``medclip``, ``gloria``) each have a family
module rebuilding it in PyTorch, over the shared layout of :mod:`cxrtool.model.families.seed`.
"""

from __future__ import annotations

from pathlib import Path

from cxrtool.errors import ModelError
from cxrtool.model.families import biovil, cxrtool, gloria, hf, medclip, open_clip
from cxrtool.model.families.base import Family, ModelSummary
from cxrtool.model.hub import OPEN_CLIP_CONFIG

FAMILIES: tuple[Family, ...] = (cxrtool.FAMILY, hf.FAMILY, open_clip.FAMILY, biovil.FAMILY, medclip.FAMILY,
                                gloria.FAMILY)
_BY_NAME = {name: family for family in FAMILIES for name in family.names}

__all__ = ["FAMILIES", "Family", "ModelSummary", "detect", "family_named", "unsupported_dir_error"]


def family_named(name: str) -> Family:
    """The family that builds a card's ``family`` (the card has validated the name)."""
    return _BY_NAME[name]


def detect(directory: Path) -> Family | None:
    """The family that reads a directory without model.json by its own config files (None: none)."""
    return next((family for family in FAMILIES if family.detect(directory)), None)


def unsupported_dir_error(directory: Path) -> ModelError:
    kind = hf.model_type(directory)
    what = f"a Hugging Face {kind!r} model" if kind else "no model cxrtool knows"
    return ModelError(f"{directory}: {what} (need model.json, a CLIP/SigLIP config.json or {OPEN_CLIP_CONFIG})",
                      "supported: cxrtool model directories, transformers CLIPModel/SiglipModel and open_clip "
                      "directories; see docs/models.md")
