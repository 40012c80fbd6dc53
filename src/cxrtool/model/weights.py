"""Weights that fit exactly: strict placement by name and shape, and the fingerprint that proves it.

Nothing in cxrtool loads weights with ``strict=False``; this is the one place that places a state
dict into a module and the one place that hashes a model's tensors.
"""

from __future__ import annotations

import hashlib

import torch

from cxrtool.errors import ModelError, WeightMismatchError

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


def load_exact(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Place ``state`` into ``module`` or refuse by name: missing, unexpected or wrong-shaped tensors."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightMismatchError(missing, unexpected, source)
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise ModelError(f"{source}: weight {k} has shape {tuple(state[k].shape)}, "
                         f"the card's architecture needs {tuple(expected[k].shape)}")
    module.load_state_dict(state, strict=True)
