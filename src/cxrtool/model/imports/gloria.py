"""Import GLoRIA's released PyTorch Lightning checkpoint (``chexpert_resnet50.ckpt``) as a cxrtool model.

The file is PyTorch Lightning 1.1's ``dump_checkpoint``: ``epoch``, ``global_step``,
``pytorch-lightning_version``, ``callbacks`` (a dict keyed by callback *classes*), ``optimizer_states``,
``lr_schedulers``, ``native_amp_scaling_state``, ``state_dict``, ``hyper_parameters`` (an OmegaConf
``DictConfig``) and ``hparams_type``. It is read through :mod:`cxrtool.model.imports.safe_pickle`
(Lightning and OmegaConf classes become inert stand-ins; nothing in the file runs). Only
``state_dict`` is used; its keys carry the Lightning module's ``gloria.`` prefix and are placed
explicitly onto the ``gloria`` family (:mod:`cxrtool.model.families.gloria`):

=================================================  ===========================================
GLoRIA key                                         cxrtool model
=================================================  ===========================================
``gloria.img_encoder.model.*`` (torchvision names) ``image.model.*`` (torchvision ResNet-50)
``gloria.img_encoder.global_embedder.*``           ``image.global_embedder.*``
``gloria.text_encoder.model.*`` (HF BERT)          ``text.bert.*`` (transformers ``BertModel``)
``gloria.img_encoder.local_embedder.weight``       left out (local word-region branch; shape checked)
``gloria.text_encoder.model.pooler.*``             left out (GLoRIA never calls BERT's pooler)
``gloria.text_encoder.model.embeddings.position_ids``  dropped after checking it equals the recomputed one
=================================================  ===========================================

The text tower's config and tokenizer come from ``text_encoder`` (Bio_ClinicalBERT's ``config.json`` +
``vocab.txt``, a hub name or a local folder); its weights come from the checkpoint. The preprocessing
and text handling are GLoRIA's published ``chexpert_pretrain_config.yaml`` (image 256 -> centre crop
224, normalisation "half", 97 word pieces, last 4 layers summed); when the checkpoint's
``hyper_parameters`` can be read, its sizes are used and a configuration this family does not
implement is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cxrtool import __version__
from cxrtool.constants import CXR_CLIP_TEXT_ENCODER
from cxrtool.errors import CheckpointMismatchError, ModelError
from cxrtool.model.card import ImageSpec, ModelCard, ScoringSpec, TextSpec
from cxrtool.model.families.gloria import LAST_N_LAYERS, RESNET50, TRUNK_DIM, GLoRIAModel, build
from cxrtool.model.families.seed import text_source
from cxrtool.model.imports.common import (
    ImportReport,
    config_value,
    finish_import,
    place_weights,
    prepare_import,
    recomputed_buffers,
)
from cxrtool.model.imports.safe_pickle import plain, read_checkpoint
from cxrtool.model.sources import quiet_transformers

FORMAT = "gloria"
DEFAULT_TEXT_ENCODER = CXR_CLIP_TEXT_ENCODER  # emilyalsentzer/Bio_ClinicalBERT (configs/*: model.text.bert_type)
LAYOUT = "GLoRIA ResNet-50"
PREFIX = "gloria."  # PretrainModel.gloria (the LightningModule attribute)
BERT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")  # older transformers stored them
IMAGE, EMBEDDER, TEXT = "gloria.img_encoder.model.", "gloria.img_encoder.global_embedder.", "gloria.text_encoder.model."
LOCAL = "gloria.img_encoder.local_embedder.weight"
POOLER = TEXT + "pooler."
LOCAL_DIM = 1024  # cnn_backbones.resnet_50: interm_feature_dim (layer3 channels)

LICENCE = ("code Apache-2.0 (marshuang80/gloria); weights: no licence stated upstream (manual Stanford Box "
           "download), trained on CheXpert (Stanford research-use data terms). cxrtool never bundles these weights.")
INTENDED_USE = ("research (GLoRIA, ICCV 2021; upstream states no intended use); not for clinical use; global "
                "embeddings only (GLoRIA's local word-region features are left out)")

# configs/chexpert_pretrain_config.yaml (the released checkpoint's config).
PUBLISHED = {"imsize": 256, "crop_size": 224, "word_num": 97, "temp3": 10.0}
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]  # transforms.norm: 'half'
# hyper_parameters this family implements: (path, required value). Anything else is refused by name.
IMPLEMENTED = (
    (("model", "vision", "model_name"), "resnet_50"),
    (("model", "text", "last_n_layers"), LAST_N_LAYERS),
    (("model", "text", "aggregate_method"), "sum"),
    (("model", "text", "agg_tokens"), True),
    (("transforms", "norm"), "half"),
)
RESNET18_REFUSAL = ("{source}: a GLoRIA ResNet-18 checkpoint: refused, because upstream's resnet_18 backbone is "
                    "broken (its local embedder expects 1024 layer3 channels where ResNet-18 has 256, and "
                    "gloria.py lists a 2048-d feature for it), so no upstream code path embeds with it; import "
                    "chexpert_resnet50.ckpt")


def _split_payload(payload: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str]]:
    """The state dict (keys as in the file), the plain metadata (epoch, hyper-parameters, ...) and the
    names of the top-level entries not needed to embed."""
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        state, rest = payload["state_dict"], {k: v for k, v in payload.items() if k != "state_dict"}
    elif isinstance(payload, Mapping) and payload and all(str(k).startswith(PREFIX) for k in payload):
        state, rest = payload, {}  # a bare state dict (someone saved ckpt["state_dict"] alone)
    else:
        found = sorted(map(str, payload))[:6] if isinstance(payload, Mapping) else type(payload).__name__
        raise ModelError(f"{source}: not a GLoRIA checkpoint (expected a PyTorch Lightning .ckpt with a "
                         f"'state_dict'; found {found})", "pass GLoRIA's released chexpert_resnet50.ckpt")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{source}: its 'state_dict' entry is not a state dict of tensors")
    foreign = sorted(str(k) for k in state if not str(k).startswith(PREFIX))
    if foreign:
        raise ModelError(f"{source}: not a GLoRIA checkpoint: state_dict key {foreign[0]!r} lacks the Lightning "
                         f"module's {PREFIX!r} prefix", "pass GLoRIA's released chexpert_resnet50.ckpt")
    meta_keys = ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters")
    meta = {k: plain(rest[k]) for k in meta_keys if k in rest}
    ignored = sorted(str(k) for k in rest if k not in meta_keys)
    return {str(k): v for k, v in state.items()}, meta, ignored


def _check_backbone(state: Mapping[str, torch.Tensor], hparams: Any, source: str) -> None:
    """Refuse ResNet-18 (and anything that is not GLoRIA's ResNet-50) in one line."""
    if config_value(hparams, "model", "vision", "model_name") == "resnet_18" or (
            IMAGE + "layer1.0.conv1.weight" in state and IMAGE + "layer1.0.conv3.weight" not in state):
        raise ModelError(RESNET18_REFUSAL.format(source=source))
    for path, wanted in IMPLEMENTED:
        have = config_value(hparams, *path)
        if have is not None and have != wanted:
            raise ModelError(f"{source}: hyper_parameters {'.'.join(path)} is {have!r}; cxrtool implements GLoRIA's "
                             f"published configuration ({wanted!r})")


def _sizes(hparams: Any) -> dict[str, Any]:
    """Image/text sizes and the global temperature: the checkpoint's hyper-parameters, else the published ones."""
    found = {"imsize": config_value(hparams, "data", "image", "imsize"),
             "crop_size": config_value(hparams, "transforms", "random_crop", "crop_size"),
             "word_num": config_value(hparams, "data", "text", "word_num"),
             "temp3": config_value(hparams, "model", "gloria", "temp3")}
    def usable(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0

    return {key: type(default)(found[key]) if usable(found[key]) else default for key, default in PUBLISHED.items()}


def build_gloria_model(state: Mapping[str, torch.Tensor], hparams: Any, text_encoder: str,
                       source: str) -> tuple[GLoRIAModel, dict[str, Any]]:
    """An untrained GLoRIA model with the checkpoint's architecture and GLoRIA's preprocessing (+ its sizes)."""
    from transformers import BertModel

    _check_backbone(state, hparams, source)
    sizes = _sizes(hparams)
    head = state.get(EMBEDDER + "weight")
    if head is None:
        raise CheckpointMismatchError([EMBEDDER + "weight"], [], source, LAYOUT)
    if head.ndim != 2 or int(head.shape[1]) != TRUNK_DIM:
        raise ModelError(f"{source}: weight {EMBEDDER}weight has shape {tuple(head.shape)}, the {LAYOUT} layout needs "
                         f"(embedding dim, {TRUNK_DIM})")
    embed_dim = int(head.shape[0])
    quiet_transformers()
    # Bio_ClinicalBERT's tokenizer as GLoRIA's AutoTokenizer made it (no tokenizer_config.json there: lower-case)
    config, tokenizer = text_source(text_encoder, sizes["word_num"])
    if int(config.hidden_size) != embed_dim:
        raise ModelError(f"{source}: the image embedding is {embed_dim}-d but the text encoder's hidden size is "
                         f"{config.hidden_size}; GLoRIA compares them directly (no text projection)",
                         "pass the text encoder the checkpoint was trained with (Bio_ClinicalBERT)")
    card = ModelCard(
        image=ImageSpec(timm_name=RESNET50, feature_dim=TRUNK_DIM, input_size=sizes["crop_size"],
                        resize="gloria_area_pad_crop", pad_size=sizes["imsize"], interpolation="area",
                        mean=list(MEAN), std=list(STD), in_channels=3),
        text=TextSpec(feature_dim=embed_dim, max_length=sizes["word_num"], pooling="native", source=text_encoder,
                      padding="max_length", attention_mask=True),
        embed_dim=embed_dim,
        family="gloria",
        scoring=ScoringSpec(rule="softmax", logit_scale=sizes["temp3"]),
        projection_bias=True,
    )
    card.validate()
    model = build(card, BertModel(config, add_pooling_layer=False), tokenizer)
    return model.eval(), sizes


def _source_of(name: str) -> str:
    for ours, theirs in (("image.model.", IMAGE), ("image.global_embedder.", EMBEDDER), ("text.bert.", TEXT)):
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name


def _left_out(state: Mapping[str, torch.Tensor], embed_dim: int, source: str) -> list[str]:
    """The checkpoint tensors GLoRIA's global embeddings never use (checked, then not placed)."""
    local = state.get(LOCAL)
    if local is None:
        raise CheckpointMismatchError([LOCAL], [], source, LAYOUT)
    if tuple(local.shape) != (embed_dim, LOCAL_DIM, 1, 1):
        raise ModelError(f"{source}: weight {LOCAL} has shape {tuple(local.shape)}, the {LAYOUT} layout needs "
                         f"{(embed_dim, LOCAL_DIM, 1, 1)} for it")
    return [LOCAL, *sorted(k for k in state if k.startswith(POOLER))]


def import_gloria(checkpoint: str | Path, out_dir: str | Path | None = None, text_encoder: str = DEFAULT_TEXT_ENCODER,
                  overwrite: bool = False) -> ImportReport:
    """Read a GLoRIA Lightning checkpoint safely, place every weight by name, write and re-verify a model directory."""
    path, out, digest = prepare_import(checkpoint, out_dir, FORMAT, overwrite)
    state, meta, ignored = _split_payload(read_checkpoint(path), path.name)
    hparams = meta.get("hyper_parameters")
    model, sizes = build_gloria_model(state, hparams, text_encoder, path.name)
    left_out = _left_out(state, model.card.embed_dim, path.name)
    placed = {k: v for k, v in state.items() if k not in left_out}
    used, dropped = place_weights(model, placed, _source_of, recomputed_buffers(placed, TEXT, model.text.bert,
                                                                   text_buffers=BERT_BUFFERS), path.name, LAYOUT)
    ignored = ignored + [f"state_dict: {key}" for key in left_out]
    epoch = meta.get("epoch")
    report = ImportReport(
        format=FORMAT, source=str(path), sha256=digest, tensors=used, dropped=dropped, ignored=ignored,
        architecture=f"GLoRIA ResNet-50 + BERT ({model.card.embed_dim}-d global embeddings)",
        epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None, licence=LICENCE,
    )
    pad, size, words = sizes["imsize"], sizes["crop_size"], sizes["word_num"]
    provenance = {
        "name": f"GLoRIA {path.stem}",
        "imported_from": FORMAT,
        "source_file": path.name,
        "source_sha256": digest,
        "epoch": report.epoch,
        "global_step": meta.get("global_step") if isinstance(meta.get("global_step"), int) else None,
        "pytorch_lightning_version": str(meta.get("pytorch-lightning_version", "")) or None,
        "licence": LICENCE,
        "intended_use": INTENDED_USE,
        "architecture": "torchvision ResNet-50 (fc = identity) on the input upsampled to 299 x 299 (bilinear, "
                        f"align_corners) -> average-pooled layer4 (2048) -> global_embedder Linear(2048, "
                        f"{model.card.embed_dim}); BERT (Bio_ClinicalBERT layout) with hidden states; cosine scoring",
        "preprocessing": f"as GLoRIA's process_img: the image as 8 bits (cv2.imread(path, 0)), OpenCV INTER_AREA "
                         f"resize of the long side to {pad} (short side int(short * {pad} / long), reproduced bit "
                         f"for bit without OpenCV), zero-padded to {pad} x {pad} (floor/ceil), CenterCrop({size}), "
                         f"/255, (x - 0.5) / 0.5 on 3 identical channels; the model then upsamples to 299",
        "text": f"GLoRIA's process_text cleaning, Bio_ClinicalBERT BertTokenizerFast (lower-case), padded and "
                f"truncated to {words} tokens; global = sum over the last {LAST_N_LAYERS} layers of the hidden "
                f"states summed from [CLS] to [SEP], / {words}; no projection; L2",
        "text_cleaning": "GLoRIA's process_text (split at 'N.' and '.', \\w+ words lower-cased, sentences of one "
                         "word dropped, ASCII only); upstream turns a one-word query ('cardiomegaly') into the "
                         "empty text, so cxrtool keeps the one-word sentences when the cleaning would otherwise "
                         "leave nothing (upstream's result in every other case)",
        "left_out": "GLoRIA's local word-region features (img_encoder.local_embedder, the word embeddings) are "
                    "not used: search, classify and evaluate use the global embeddings; BERT's pooler (never "
                    "used by GLoRIA) is not kept",
        "scoring": f"softmax over cosines x {sizes['temp3']:g} (GLoRIA's global-loss temperature temp3)",
        "text_encoder": text_encoder,
        "dropped_buffers": dropped,
        "ignored_entries": ignored,
        "cxrtool_version": __version__,
    }
    return finish_import(model, out, report, provenance)
