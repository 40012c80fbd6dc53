"""A model named now and loaded on first use, once: ``Index.open`` keeps one for its searches, so
a model given by name is loaded a single time, and the model package is imported only when a
query needs it (a search by id or metadata never does; a text query reads only the card and runs
the text side's ONNX export when there is one, :mod:`cxrtool.model.onnx_text`)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cxrtool.model.card import ModelCard
    from cxrtool.model.dual import DualEncoder


class LazyModel:
    """``model``: a loaded DualEncoder, a model directory or hub name, or None (the default model)."""

    def __init__(self, model: DualEncoder | str | Path | None = None, device: str = "cpu") -> None:
        self.source = model
        self.device = device
        # (a loaded model is an object with a card: telling it so needs no torch import)
        self._loaded: DualEncoder | None = model if hasattr(model, "card") else None
        self._card: ModelCard | None = None
        self._lock = threading.Lock()  # the web page searches from threads

    @classmethod
    def of(cls, model: LazyModel | DualEncoder | str | Path | None, device: str = "cpu") -> LazyModel:
        """``model`` itself when it is one already, else a new one around it."""
        return model if isinstance(model, LazyModel) else cls(model, device)

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def vector_id(self) -> str | None:
        """The vector id the model makes, read from its card without loading weights when not
        loaded yet (None: no card to read)."""
        card = self.peek()
        return (card.vector_id or None) if card is not None else None

    def peek(self) -> ModelCard | None:
        """The model's card: the loaded model's, else read from its directory without loading weights
        or importing torch (None: no card of its own to read, e.g. a hub model not yet fetched)."""
        if self._loaded is not None:
            return self._loaded.card
        if self._card is None:
            from cxrtool.model.refs import peek_card

            self._card = peek_card(self.source)
        return self._card

    def card(self) -> ModelCard:
        """The model's card, loading the model only when it has no card to read."""
        return self.peek() or self.get().card

    def get(self) -> DualEncoder:
        """The model, loaded on the first call."""
        with self._lock:
            if self._loaded is None:
                from cxrtool.model import load_model

                self._loaded = load_model(self.source, device=self.device)
            return self._loaded
