"""Package namespaces that import their submodules on first use (PEP 562).

``from cxrtool.model import load_model`` must keep working, but importing ``cxrtool.model.card``
must not import torch: a package's ``__init__`` runs before any of its submodules, so an eager one
made every import of a light module pay for the heaviest (``import torch`` alone is ~2.5 s and
650 MB here, most of a cold text search). Each package lists its public names and where they live;
a name is imported when first asked for.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """(``__getattr__``, ``__dir__``) for ``package``, whose public ``name`` lives in module
    ``exports[name]``."""

    def __getattr__(name: str) -> object:
        where = exports.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where), name)
        setattr(sys.modules[package], name, value)  # once: later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
