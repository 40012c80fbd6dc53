"""The one front door to a model: name -> directory -> family -> strict weights -> fingerprint check.

``--model`` (or ``$CXRTOOL_MODEL``, or nothing: the bundled default) names a model directory
(cxrtool, transformers CLIP/SigLIP or open_clip), or a hub name (``google/medsiglip-448``,
``hf-hub:microsoft/BiomedCLIP-...``) looked for under the models home first, then fetched
(:mod:`cxrtool.model.hub`). The directory's card (``model.json``, or the one its family derives from
native configs) picks the family (:mod:`cxrtool.model.families`), which rebuilds the modules and
places every weight strictly; the result must hash to the card's fingerprint. Each step happens
here once; saving is the same path backwards.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cxrtool.constants import BUNDLED_MODEL, DEFAULT_MODEL_DIR
from cxrtool.errors import ModelError
from cxrtool.model.card import CARD_FILE, ModelCard
from cxrtool.model.dual import DualEncoder
from cxrtool.model.families import detect, family_named, unsupported_dir_error
from cxrtool.model.refs import resolve_model

FINGERPRINT_HINT = ("the weights file or a base-weight package changed since the model was saved; "
                    "reinstall the package versions named in the card or re-export the model")


def fingerprint_state(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")  # no copy of large models
    return "sha256:" + h.hexdigest()


def load_model(model: str | None = None, device: str | torch.device = "cpu") -> DualEncoder:
    """Load the named model (directory or hub name), $CXRTOOL_MODEL, or the bundled default model."""
    ref = resolve_model(model, fetch=True)
    loaded = load_model_dir(ref.directory, device=device, name=ref.hub_name)
    if ref.hub_name:
        loaded.origin = ref.hub_name
    return loaded


def load_model_dir(directory: str | Path, device: str | torch.device = "cpu", name: str = "") -> DualEncoder:
    """Rebuild a model from its directory alone; refuse any weight that does not fit exactly.

    A native CLIP/SigLIP/open_clip directory without model.json loads too: its family derives the
    card from its own configs, and the fingerprint is computed from the weights it holds."""
    directory = Path(directory)
    card = None
    if (directory / CARD_FILE).is_file():
        card = ModelCard.load(directory)
        family = family_named(card.family)
    else:
        family = detect(directory)
        if family is None:
            if (directory / "config.json").is_file():
                raise unsupported_dir_error(directory)
            ModelCard.load(directory)  # refused with the "not a model directory" hint
    model = family.load(directory, card, name)
    actual = fingerprint_state(model.state_dict())
    if model.card.fingerprint and actual != model.card.fingerprint:
        raise ModelError(f"{directory}: weights do not match the card's fingerprint", FINGERPRINT_HINT)
    model.card.fingerprint = actual
    model.origin = model_origin(directory)
    return model.to(device).eval()


def model_origin(directory: Path) -> str:
    """How a workspace records the model it was embedded with: the bundled model by name (a
    reinstall moves its folder), any other directory by absolute path (hub names: by name)."""
    path = Path(directory).resolve()
    return BUNDLED_MODEL if path == DEFAULT_MODEL_DIR.resolve() else str(path)


def save_model_dir(model: DualEncoder, directory: str | Path, changed_only: bool = False,
                   provenance: dict | None = None) -> Path:
    """Write the model's directory atomically, in its family's layout, with its card beside it.

    The card gets the weights' fingerprint and ``provenance``; laterality figures measured on other
    weights (e.g. before fine-tuning) are dropped. ``changed_only`` applies to the cxrtool family
    (see :mod:`cxrtool.model.families.cxrtool`); the native families are saved whole."""
    directory = Path(directory)
    card = ModelCard.from_dict(model.card.to_dict())
    fingerprint = fingerprint_state(model.state_dict())
    if card.fingerprint != fingerprint:
        card.laterality = {}  # measured on other weights: no longer this model's
    card.fingerprint = fingerprint
    if provenance:
        card.provenance = {**card.provenance, **provenance}
    family_named(card.family).save(model, directory, card, changed_only)
    model.card.fingerprint = card.fingerprint
    model.card.provenance = card.provenance
    return directory
