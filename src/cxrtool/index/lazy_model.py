"""A model named now and loaded on first use, once: ``Index.open`` keeps one for its searches, so
a model given by name is loaded a single time, and the model package is imported only when a
query needs it (a search by id or metadata never does)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cxrtool.model.dual import DualEncoder


class LazyModel:
    """``model``: a loaded DualEncoder, a model directory or hub name, or None (the default model)."""

    def __init__(self, model: DualEncoder | str | Path | None = None, device: str = "cpu") -> None:
        from cxrtool.model.dual import DualEncoder

        self.source = model
        self.device = device
        self._loaded: DualEncoder | None = model if isinstance(model, DualEncoder) else None
        self._lock = threading.Lock()  # the web page searches from threads

    @classmethod
    def of(cls, model: LazyModel | DualEncoder | str | Path | None, device: str = "cpu") -> LazyModel:
        """``model`` itself when it is one already, else a new one around it."""
        return model if isinstance(model, LazyModel) else cls(model, device)

    def vector_id(self) -> str | None:
        """The vector id the model makes, read from its card without loading weights when not
        loaded yet (None: no card to read)."""
        if self._loaded is not None:
            return self._loaded.card.vector_id
        from cxrtool.model import peek_vector_id

        return peek_vector_id(self.source)

    def get(self) -> DualEncoder:
        """The model, loaded on the first call."""
        with self._lock:
            if self._loaded is None:
                from cxrtool.model import load_model

                self._loaded = load_model(self.source, device=self.device)
            return self._loaded
