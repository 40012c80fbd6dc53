"""The model core shared by train, embed, search and evaluation."""

from cxrtool.model.card import ImageSpec, ModelCard, ScoringSpec, TextSpec
from cxrtool.model.directory import (
    DEFAULT_MODEL_DIR,
    create_model,
    fingerprint_state,
    load_model,
    load_model_dir,
    resolve_model,
    save_model_dir,
)
from cxrtool.model.dual import DualEncoder
from cxrtool.model.native import HFDualEncoder, OpenClipDualEncoder, wrap_hf_model
from cxrtool.model.registry import list_models, models_home

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DualEncoder",
    "HFDualEncoder",
    "ImageSpec",
    "ModelCard",
    "OpenClipDualEncoder",
    "ScoringSpec",
    "TextSpec",
    "create_model",
    "fingerprint_state",
    "list_models",
    "load_model",
    "load_model_dir",
    "models_home",
    "resolve_model",
    "save_model_dir",
    "wrap_hf_model",
]
