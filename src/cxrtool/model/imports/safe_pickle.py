"""Read foreign torch checkpoints without running any code they name.

A ``torch.save`` file is a pickle, and unpickling calls whatever importable function the file
names (``os.system``, ``eval``, ...). The released CXR-CLIP, CheXzero and GLoRIA files need none of
that: they hold tensors, plain containers, OmegaConf config objects (CXR-CLIP's config, a PyTorch
Lightning checkpoint's ``hyper_parameters`` / ``hparams_type``) and, in a Lightning ``.ckpt``, the
callback classes its ``callbacks`` dict is keyed by. This module is the one place cxrtool unpickles
such files. Its Unpickler resolves a global only if it is

* a torch tensor/storage rebuild function, ``torch.Size``/``torch.device`` or a torch dtype;
* ``collections.OrderedDict``/``defaultdict``, a plain builtin data type (``dict``, ``list``, ...) or
  ``_codecs.encode`` restricted to latin-1 (how protocol 2 stores ``bytes``);
* an OmegaConf class, a ``typing`` name or a PyTorch Lightning class (``pytorch_lightning.*``,
  ``lightning.*``, ``lightning_fabric.*``): these become inert stand-ins (:class:`ForeignObject`
  subclasses) that only hold their pickled arguments and state, so neither OmegaConf nor Lightning
  need be installed and none of their code runs. Creating, calling or restoring a stand-in stores
  data and does nothing else, so a Lightning name used to smuggle a call is neutralised too.

Anything else is refused by name before it could be called (``RefusedGlobal``). Stock
``torch.load(weights_only=True)`` refuses the OmegaConf objects, and ``weights_only=False`` would run
anything, which is why this exists.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import hashlib
import io
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

from cxrtool.errors import ModelError

_BUILTIN_TYPES = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes",
                  "bytearray", "bool", "slice", "range", "object"}
_TORCH_FUNCTIONS = {("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
                    ("torch._utils", "_rebuild_tensor_v3"), ("torch._utils", "_rebuild_parameter"),
                    ("torch", "Size"), ("torch", "device")}
# Config objects and Lightning classes we never import: mapped to stand-ins (typing names appear in
# OmegaConf metadata; Lightning .ckpt files key their "callbacks" dict by callback classes, e.g.
# pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint in PL 1.x).
_INERT_MODULES = ("omegaconf", "typing", "pytorch_lightning", "lightning", "lightning_fabric")


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that a checkpoint of weights never needs."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


class ForeignObject:
    """Inert stand-in for a class that cxrtool does not import (an OmegaConf node, a Lightning callback).

    Creating it, calling it and setting its state only store data; it has no other behaviour.
    """

    foreign_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> ForeignObject:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.foreign_name}>"


_stand_ins: dict[str, type[ForeignObject]] = {}


def _stand_in(qualified: str) -> type[ForeignObject]:
    if qualified not in _stand_ins:
        _stand_ins[qualified] = type(qualified.rsplit(".", 1)[-1], (ForeignObject,), {"foreign_name": qualified})
    return _stand_ins[qualified]


def _torch_dtype(name: str) -> Any:
    import torch

    value = getattr(torch, name, None)
    return value if isinstance(value, torch.dtype) else None


class Unpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class is an allow-list (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 files (torch.save's default) name builtins the Python 2 way (__builtin__.long).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if module == "builtins" and name in _BUILTIN_TYPES:
            return getattr(builtins, name)
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 writes bytes: encode(text, "latin1")
            return _latin1_bytes
        if module == "collections" and name in ("OrderedDict", "defaultdict"):
            return getattr(collections, name)
        if (module, name) in _TORCH_FUNCTIONS:
            import torch._utils  # noqa: F401  (torch.load has imported it; this makes the lookup explicit)

            return getattr(sys.modules[module], name)
        if module == "torch" and _torch_dtype(name) is not None:
            return _torch_dtype(name)
        if module.split(".")[0] in _INERT_MODULES:
            return _stand_in(f"{module}.{name}")
        raise RefusedGlobal(module, name)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal("_codecs", f"encode(..., {encoding!r})")
    return text.encode("latin1")


def load(file: Any, **kwargs: Any) -> Any:
    """pickle.load with the restricted Unpickler (torch.load calls this for legacy-format files)."""
    return Unpickler(file, **kwargs).load()


def read_checkpoint(path: Path, member: str | None = None) -> Any:
    """Unpickle a torch.save file onto the CPU through the allow-list; typed errors name the problem.
    ``member``: read that file of a zip archive (a release zip holding the checkpoint) from memory,
    without extracting anything."""
    import torch

    label = f"{path.name}:{member}" if member else path.name
    try:
        if member is None:
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=sys.modules[__name__])
        with zipfile.ZipFile(path) as zf:
            data = zf.read(member)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False,
                          pickle_module=sys.modules[__name__])
    except RefusedGlobal as exc:
        raise ModelError(
            f"{label}: refused: unpickling it would call {exc.qualified}, which a checkpoint of weights never "
            "needs (nothing was run)",
            "cxrtool reads only tensors, plain containers, OmegaConf configs and Lightning checkpoint metadata; if "
            "you did not expect this, the file is not what it claims to be: delete it and download it again from "
            "the project",
        ) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, TypeError, AttributeError,
            zipfile.BadZipFile, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{label}: not a readable torch checkpoint ({reason})",
                         "check that the download finished (compare its size or sha256 with the release)") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of the file's bytes, for provenance (compare with a published checksum)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def plain(obj: Any) -> Any:
    """Stand-ins and containers -> plain Python data (OmegaConf Dict/ListConfig -> dict/list, nodes -> values).

    Used to read the few config values an importer checks (image size, text length, pooling).
    """
    if isinstance(obj, ForeignObject):
        state = getattr(obj, "state", None)
        if isinstance(state, tuple) and len(state) == 2:
            state = state[0]
        if isinstance(state, dict) and "_content" in state:
            return plain(state["_content"])
        if isinstance(state, dict) and "_val" in state:
            return plain(state["_val"])
        return repr(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, type):
        return obj.__name__
    return obj
