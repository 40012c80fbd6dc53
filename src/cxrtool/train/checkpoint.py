"""Training checkpoints: everything needed to continue a killed run exactly where it stopped.

``last.pt`` holds the model, optimizer, scheduler and scaler states, every RNG state (Python,
NumPy, torch CPU and CUDA), the position (epoch, next batch, global step), the best score so far
and the history. It is written to a temporary file and moved into place with ``os.replace``, so
a kill during the write leaves the previous checkpoint intact. ``best.pt`` holds only the weights
of the best epoch.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrtool.errors import ModelError

LAST = "last.pt"
BEST = "best.pt"


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Our own checkpoint (written by this module): it holds RNG states, so it is not weights-only."""
    if not path.is_file():
        raise ModelError(f"{path}: no checkpoint to resume from", "start without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(f"{path}: unreadable checkpoint ({exc})".splitlines()[0],
                         "delete it to start over, or resume from an older copy") from None
