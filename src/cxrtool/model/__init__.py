"""The model core shared by train, embed, search and evaluation.

:mod:`~cxrtool.model.factory` is the front door (name -> directory -> family -> strict weights ->
fingerprint); :mod:`~cxrtool.model.families` holds one module per family; :mod:`~cxrtool.model.hub`
the hub names and downloads; :mod:`~cxrtool.model.registry` the listing of `cxrtool models`.
"""

from typing import TYPE_CHECKING

from cxrtool.lazy import lazy_exports

if TYPE_CHECKING:  # the names as type checkers and editors see them
    from cxrtool.model.card import ImageSpec, ModelCard, ScoringSpec, TextSpec
    from cxrtool.model.dual import DualEncoder
    from cxrtool.model.factory import DEFAULT_MODEL_DIR, fingerprint_state, load_model, load_model_dir, save_model_dir
    from cxrtool.model.families.cxrtool import create_model
    from cxrtool.model.families.hf import HFDualEncoder, wrap_hf_model
    from cxrtool.model.families.open_clip import OpenClipDualEncoder
    from cxrtool.model.hub import models_home
    from cxrtool.model.refs import ModelRef, peek_vector_id, resolve_model
    from cxrtool.model.registry import list_models

# Imported on first use: importing a light submodule must not import torch (cxrtool/lazy.py).
_EXPORTS = {
    "ImageSpec": "cxrtool.model.card",
    "ModelCard": "cxrtool.model.card",
    "ScoringSpec": "cxrtool.model.card",
    "TextSpec": "cxrtool.model.card",
    "DualEncoder": "cxrtool.model.dual",
    "DEFAULT_MODEL_DIR": "cxrtool.model.factory",
    "ModelRef": "cxrtool.model.refs",
    "fingerprint_state": "cxrtool.model.factory",
    "load_model": "cxrtool.model.factory",
    "load_model_dir": "cxrtool.model.factory",
    "peek_vector_id": "cxrtool.model.refs",
    "resolve_model": "cxrtool.model.refs",
    "save_model_dir": "cxrtool.model.factory",
    "create_model": "cxrtool.model.families.cxrtool",
    "HFDualEncoder": "cxrtool.model.families.hf",
    "wrap_hf_model": "cxrtool.model.families.hf",
    "OpenClipDualEncoder": "cxrtool.model.families.open_clip",
    "models_home": "cxrtool.model.hub",
    "list_models": "cxrtool.model.registry",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
