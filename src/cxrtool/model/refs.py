"""What a ``--model`` name points to, and its card, without loading weights or importing torch.

Split from :mod:`cxrtool.model.factory` (which loads weights, so imports torch) because a text
search reads only the card and the text side: it resolves the name here, reads the card, and runs
the text tower's ONNX export (:mod:`cxrtool.model.onnx_text`) when there is one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cxrtool.constants import DEFAULT_MODEL_DIR, MODEL_ENV
from cxrtool.errors import ModelError
from cxrtool.model.card import CARD_FILE, ModelCard
from cxrtool.model.hub import locate


@dataclass(frozen=True)
class ModelRef:
    """Where a ``--model`` name points: a local ``directory``, or a ``hub_name`` still to fetch.

    ``hub_name`` is kept when a hub name was found as a local copy too: it names the model in the
    card's provenance."""

    directory: Path | None
    hub_name: str = ""

    @property
    def is_bundled(self) -> bool:
        return self.directory is not None and self.directory.resolve() == DEFAULT_MODEL_DIR.resolve()


def resolve_model(model: str | None, fetch: bool = False) -> ModelRef:
    """--model / $CXRTOOL_MODEL / the bundled default, without loading weights.

    A hub name (``org/name``, or ``hf-hub:org/name`` for open_clip) is looked for as a folder of the
    models home first (``<home>/org/name``, where the download hint tells people to put it); with
    ``fetch``, then in the Hugging Face cache or the hub (else its ``directory`` is None)."""
    name = model or os.environ.get(MODEL_ENV) or ""
    if not name:
        if not (DEFAULT_MODEL_DIR / CARD_FILE).is_file():
            raise ModelError("the bundled default model is missing from this installation",
                             "run `make default-model` or pass --model DIR")
        return ModelRef(DEFAULT_MODEL_DIR)
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelRef(path)
    return ModelRef(locate(name, fetch), name)


def peek_card(model: str | Path | None) -> ModelCard | None:
    """The card a model directory holds (``model.json``), without loading weights (None: the model
    is not local, or has no card of its own, e.g. a native CLIP folder whose family derives one)."""
    ref = resolve_model(str(model) if isinstance(model, Path) else model)
    if ref.directory is None or not (ref.directory / CARD_FILE).is_file():
        return None
    try:
        return ModelCard.load(ref.directory)
    except ModelError:
        return None


def peek_vector_id(model: str | Path | None) -> str | None:
    """The vector id (fingerprint + embedding mode) a model's card records, without loading weights
    (None: no card to read)."""
    card = peek_card(model)
    return (card.vector_id or None) if card is not None else None
