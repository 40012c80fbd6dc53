"""What every model family shares: the small interface the factory calls, a `cxrtool models` row,
and the atomic write of a model directory.

A family is data, not a branch: ``detect`` (a directory without model.json that the family's own
library can read), ``load`` (build the modules and place the weights strictly; the factory checks
the fingerprint), ``save`` (write the family's files; the factory has filled in the card) and
``describe`` (a listing row from config files alone, never weights).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cxrtool.errors import ModelError, WeightMismatchError
from cxrtool.model.card import CARD_FILE, WEIGHTS_FILE, ModelCard
from cxrtool.model.dual import DualEncoder


@dataclass
class ModelSummary:
    """One row of `cxrtool models`."""

    name: str
    family: str
    embed_dim: int | None  # the width of the vectors it writes (2 x the projection for a flip_pair model)
    input_size: int | None
    scoring: str
    where: str  # a directory, or "hub"
    fingerprint: str = ""  # recorded in model.json (native directories get theirs when loaded)
    params: str = ""
    licence: str = ""
    licence_note: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Family:
    """One way of building a dual encoder from a directory (see the module docstring)."""

    names: tuple[str, ...]  # the card ``family`` values it builds
    detect: Callable[[Path], bool]
    load: Callable[[Path, ModelCard | None, str], DualEncoder]
    save: Callable[[DualEncoder, Path, ModelCard, bool], None]
    describe: Callable[[Path, str], ModelSummary | None]


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


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """A model directory's model.safetensors, or one line saying what is wrong with it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"{directory}: {WEIGHTS_FILE} is missing", "copy the whole model directory")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{path}: unreadable weights file ({exc})") from None


def read_json(path: Path) -> dict[str, Any] | None:
    """A config file's JSON object (None: missing, unreadable or not an object): listing never fails."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def size_of(value: Any) -> int | None:
    """An input size from a processor/config field: an int, a list, or a {shortest_edge|height} dict."""
    if isinstance(value, dict):
        value = value.get("shortest_edge") or value.get("height")
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return int(value) if isinstance(value, (int, float)) and value else None


def refuse_foreign(directory: Path) -> None:
    if directory.is_dir() and any(directory.iterdir()) and not (directory / CARD_FILE).is_file():
        raise ModelError(f"{directory} exists and is not a model directory; refusing to write into it",
                         "choose a new or empty --out directory")


def write_model_files(directory: Path, card: ModelCard, fill: Callable[[Path], None],
                      clear: tuple[str, ...] = ()) -> None:
    """Write a model directory atomically per file: ``fill(tmp)`` writes the family's files, the card
    is added, then each file replaces its namesake (other files, such as a README, stay; ``clear``
    names folders removed even when the new model has none). The card goes last, so an interrupted
    save fails the fingerprint check instead of loading half a model."""
    refuse_foreign(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-model-", dir=directory))
    try:
        fill(tmp)
        card.save(tmp)
        (directory / CARD_FILE).unlink(missing_ok=True)
        for name in clear:
            shutil.rmtree(directory / name, ignore_errors=True)
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == CARD_FILE):
            target = directory / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class NativeScoring(DualEncoder):
    """A native dual encoder (CLIP, SigLIP, open_clip): temperature and bias are its own parameters."""

    def scale(self) -> torch.Tensor:
        return self.native.logit_scale.exp().reshape(())

    def bias(self) -> torch.Tensor:
        bias = scalar(getattr(self.native, "logit_bias", None))
        return bias if bias is not None else super().bias()


def scalar(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.reshape(())


def describe_card(directory: Path, name: str) -> ModelSummary:
    """A `cxrtool models` row from a directory's model.json (any family)."""
    try:
        card = ModelCard.load(directory)
    except ModelError as exc:
        return ModelSummary(name or str(directory), "?", None, None, "?", str(directory),
                            note=f"unreadable card: {exc.reason}")
    return ModelSummary(name or card.provenance.get("name") or str(directory), card.family, card.output_dim,
                        card.image.input_size, card.scoring.rule, str(directory), card.fingerprint,
                        licence=str(card.provenance.get("licence", "")),
                        note=str(card.provenance.get("intended_use", "")))
