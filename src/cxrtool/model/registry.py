"""Which models cxrtool can run: the bundled default, model directories under the models home,
and the public hub models it knows (data: ``model/hub_models.json``).

Listing reads config files only, never weights, so ``cxrtool models`` is instant even with
several gigabytes of models on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxrtool.model.card import CARD_FILE
from cxrtool.model.factory import DEFAULT_MODEL_DIR
from cxrtool.model.families import ModelSummary, detect
from cxrtool.model.families.base import describe_card
from cxrtool.model.hub import models_home

HUB_MODELS_FILE = Path(__file__).with_name("hub_models.json")
SCAN_DEPTH = 3  # <home>/org/name is depth 2; one more level tolerates a grouping folder

__all__ = ["ModelSummary", "hub_models", "list_models", "local_models", "models_home", "summarize_dir"]


def summarize_dir(path: Path, name: str = "") -> ModelSummary | None:
    """A model directory's row from its config files (None: not a model directory)."""
    if (path / CARD_FILE).is_file():
        return describe_card(path, name)
    family = detect(path)
    return family.describe(path, name or str(path)) if family is not None else None


def local_models(home: Path | None = None) -> list[ModelSummary]:
    """Model directories under the models home, named by their path below it (org/name)."""
    home = home or models_home()
    found: list[ModelSummary] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            row = summarize_dir(child, str(child.relative_to(home)))
            if row is not None:
                found.append(row)
            elif depth < SCAN_DEPTH:
                walk(child, depth + 1)

    if home.is_dir():
        walk(home, 1)
    return found


def hub_models() -> list[ModelSummary]:
    """The public medical models cxrtool knows by hub name (see docs/models.md)."""
    data = json.loads(HUB_MODELS_FILE.read_text())
    return [ModelSummary(m["name"], m["family"], m["embed_dim"], m["input_size"], m["scoring"], "hub",
                         params=m.get("params", ""), licence=m.get("licence", ""),
                         licence_note=m.get("licence_note", ""), note=m.get("note", ""))
            for m in data["models"]]


def list_models(home: Path | None = None) -> dict[str, Any]:
    """The bundled default model, local model directories and known hub models, as rows."""
    default = summarize_dir(DEFAULT_MODEL_DIR)
    return {
        "models_home": str(home or models_home()),
        "default": default,
        "local": local_models(home),
        "hub": hub_models(),
    }
