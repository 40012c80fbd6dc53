"""Which models cxrtool can run: the bundled default, model directories under the models home,
and the public hub models it knows (data: ``model/hub_models.json``).

Listing reads config files only, never weights, so ``cxrtool models`` is instant even with
several gigabytes of models on disk.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cxrtool.constants import DEFAULT_MODELS_HOME, MODELS_HOME_ENV

HUB_MODELS_FILE = Path(__file__).with_name("hub_models.json")
SCAN_DEPTH = 3  # <home>/org/name is depth 2; one more level tolerates a grouping folder


def models_home() -> Path:
    """Where local copies of hub models live: $CXRTOOL_MODELS, else ~/.cache/cxrtool/models."""
    return Path(os.environ.get(MODELS_HOME_ENV) or DEFAULT_MODELS_HOME).expanduser()


@dataclass
class ModelSummary:
    """One row of `cxrtool models`."""

    name: str
    family: str
    embed_dim: int | None
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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _size(value: Any) -> int | None:
    if isinstance(value, dict):
        value = value.get("shortest_edge") or value.get("height")
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return int(value) if isinstance(value, (int, float)) and value else None


def summarize_dir(path: Path, name: str = "") -> ModelSummary | None:
    """A model directory's row from its config files (None: not a model directory)."""
    from cxrtool.errors import ModelError
    from cxrtool.model.card import CARD_FILE, ModelCard
    from cxrtool.model.native import HF_MODEL_TYPES, OPEN_CLIP, OPEN_CLIP_CONFIG, SCORING_BY_NAME

    label = name or str(path)
    if (path / CARD_FILE).is_file():
        try:
            card = ModelCard.load(path)
        except ModelError as exc:
            return ModelSummary(label, "?", None, None, "?", str(path), note=f"unreadable card: {exc.reason}")
        return ModelSummary(name or card.provenance.get("name") or str(path), card.family, card.embed_dim,
                            card.image.input_size, card.scoring.rule, str(path), card.fingerprint)
    oc = _read_json(path / OPEN_CLIP_CONFIG)
    if oc is not None:
        cfg = oc.get("model_cfg", {})
        pre = oc.get("preprocess_cfg", {})
        sigmoid = cfg.get("init_logit_bias") is not None
        return ModelSummary(label, OPEN_CLIP, cfg.get("embed_dim"),
                            _size(pre.get("size")) or _size(cfg.get("vision_cfg", {}).get("image_size")),
                            "sigmoid" if sigmoid else "softmax", str(path), note="no model.json yet")
    config = _read_json(path / "config.json")
    family = HF_MODEL_TYPES.get((config or {}).get("model_type", ""))
    if config is None or family is None:
        return None
    vision, text = config.get("vision_config", {}), config.get("text_config", {})
    processor = _read_json(path / "preprocessor_config.json") or {}
    siglip = family == "hf-siglip"
    embed = config.get("projection_dim") or text.get("projection_size") or vision.get("hidden_size")
    scoring = "sigmoid" if siglip else "softmax"
    for pattern, rule in SCORING_BY_NAME:
        if pattern.search(label):
            scoring = rule
    return ModelSummary(label, family, embed, _size(processor.get("crop_size")) or _size(processor.get("size"))
                        or _size(vision.get("image_size")), scoring, str(path), note="no model.json yet")


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
    from cxrtool.model.directory import DEFAULT_MODEL_DIR

    default = summarize_dir(DEFAULT_MODEL_DIR)
    return {
        "models_home": str(home or models_home()),
        "default": default,
        "local": local_models(home),
        "hub": hub_models(),
    }
