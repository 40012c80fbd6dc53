"""The model core shared by train, embed, search and evaluation."""

from cxrtool.model.card import ImageSpec, ModelCard, TextSpec
from cxrtool.model.directory import (
    DEFAULT_MODEL_DIR,
    create_model,
    fingerprint_state,
    load_model,
    load_model_dir,
    save_model_dir,
)
from cxrtool.model.dual import DualEncoder

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DualEncoder",
    "ImageSpec",
    "ModelCard",
    "TextSpec",
    "create_model",
    "fingerprint_state",
    "load_model",
    "load_model_dir",
    "save_model_dir",
]
