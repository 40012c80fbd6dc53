"""The model core shared by train, embed, search and evaluation.

:mod:`~cxrtool.model.factory` is the front door (name -> directory -> family -> strict weights ->
fingerprint); :mod:`~cxrtool.model.families` holds one module per family; :mod:`~cxrtool.model.hub`
the hub names and downloads; :mod:`~cxrtool.model.registry` the listing of `cxrtool models`.
"""

from cxrtool.model.card import ImageSpec, ModelCard, ScoringSpec, TextSpec
from cxrtool.model.dual import DualEncoder
from cxrtool.model.factory import (
    DEFAULT_MODEL_DIR,
    ModelRef,
    fingerprint_state,
    load_model,
    load_model_dir,
    peek_vector_id,
    resolve_model,
    save_model_dir,
)
from cxrtool.model.families.cxrtool import create_model
from cxrtool.model.families.hf import HFDualEncoder, wrap_hf_model
from cxrtool.model.families.open_clip import OpenClipDualEncoder
from cxrtool.model.hub import models_home
from cxrtool.model.registry import list_models

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DualEncoder",
    "HFDualEncoder",
    "ImageSpec",
    "ModelCard",
    "ModelRef",
    "OpenClipDualEncoder",
    "ScoringSpec",
    "TextSpec",
    "create_model",
    "fingerprint_state",
    "list_models",
    "load_model",
    "load_model_dir",
    "models_home",
    "peek_vector_id",
    "resolve_model",
    "save_model_dir",
    "wrap_hf_model",
]
