"""Import a released MedCLIP checkpoint (ResNet-50 or Swin-T) as a cxrtool model directory.

MedCLIP (``medclip`` 0.0.3, github.com/RyanWangZf/MedCLIP) publishes ``medclip-pretrained.zip``
(ResNet-50) and ``medclip-vit-pretrained.zip`` (Swin-T), each holding a ``pytorch_model.bin``: the
``state_dict()`` of its ``MedCLIPModel``. The importer takes the zip (the member is read into
memory through the safe unpickler; nothing is extracted), a folder holding ``pytorch_model.bin``,
or the ``.bin`` itself. The variant is read off the keys; every tensor is then placed by name:

===========================================================  ==============================================
MedCLIP key                                                  cxrtool model (``medclip`` family)
===========================================================  ==============================================
``vision_model.model.*`` (torchvision ResNet-50, ``fc``      ``image.model.*`` (same names)
the 2048->512 projection)
``vision_model.model.*`` (transformers 4.24 Swin names)      ``image.model.*`` (``SwinModel``, renamed by
                                                             :data:`~cxrtool.model.imports.cxr_clip.SWIN_RENAMES`)
``vision_model.projection_head.weight`` (Swin-T only)        ``image.projection_head.weight``
``text_model.model.*`` (BertModel)                           ``text.bert.*`` (same names)
``text_model.projection_head.weight``                        ``text.projection_head.weight``
``logit_scale``                                              the card's ``scoring.logit_scale``
===========================================================  ==============================================

Not placed, and listed in the report: ``logit_scale`` (a constant here:
``exp(clamp(logit_scale, 0, 4.6052))``, as MedCLIP's ``compute_logits``), the BERT pooler
(``text_model.model.pooler.*``: MedCLIP never uses it), and the buffers the installed
transformers recomputes (BERT ``position_ids``, Swin ``relative_position_index``), dropped only
after checking they hold the recomputed values.

The text tower's config and vocabulary come from ``text_encoder`` (Bio_ClinicalBERT, a hub name
or a folder with its ``config.json`` + ``vocab.txt``); its weights come from the checkpoint.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from cxrtool import __version__
from cxrtool.constants import CXR_CLIP_TEXT_ENCODER
from cxrtool.errors import CheckpointMismatchError, ModelError
from cxrtool.model.card import ImageSpec, ModelCard, ScoringSpec, TextSpec
from cxrtool.model.families.medclip import RESNET50, SWIN_TINY, SWIN_TINY_CONFIG, MedCLIPEncoder, build
from cxrtool.model.families.seed import text_source
from cxrtool.model.imports.common import (
    ImportReport,
    finish_import,
    out_dir_for,
    place_weights,
    prepare_import,
    recomputed_buffers,
)
from cxrtool.model.imports.cxr_clip import swin_config, swin_source_key
from cxrtool.model.imports.safe_pickle import read_checkpoint
from cxrtool.model.sources import quiet_transformers

FORMAT = "medclip"
DEFAULT_TEXT_ENCODER = CXR_CLIP_TEXT_ENCODER  # emilyalsentzer/Bio_ClinicalBERT, MedCLIP's constants.BERT_TYPE
WEIGHTS_NAME = "pytorch_model.bin"  # medclip constants.WEIGHTS_NAME, at the root of the released zips
# RyanWangZf/MedCLIP has no LICENSE file (its issue #54 asks for one); setup.py declares the PyPI
# classifier "License :: OSI Approved :: BSD License" (wheel METADATA: "License: UNKNOWN"); the weights
# (storage.googleapis.com/pytrial/medclip-*pretrained.zip) state none.
LICENCE = ("MedCLIP: licence unspecified upstream (RyanWangZf/MedCLIP has no LICENSE file; its PyPI classifier says "
           "'BSD License'; the released weights state none); text tower from Bio_ClinicalBERT (MIT), Swin-T from "
           "microsoft/swin-tiny-patch4-window7-224 (Apache-2.0); trained on MIMIC-CXR (PhysioNet DUA) and CheXpert "
           "(Stanford research use). cxrtool never bundles these weights.")
INTENDED_USE = ("research use (MedCLIP, EMNLP 2022; no intended-use statement upstream); not validated for clinical "
                "use")

VISION, TEXT = "vision_model.", "text_model."
BACKBONE = VISION + "model."  # the ResNet-50 / SwinModel inside MedCLIP's vision model
RESNET_MARK = BACKBONE + "conv1.weight"
SWIN_MARK = BACKBONE + "embeddings.patch_embeddings.projection.weight"
LOGIT_SCALE = "logit_scale"
BERT_POOLER = TEXT + "model.pooler."
# medclip/constants.py: IMG_SIZE, IMG_MEAN, IMG_STD (MedCLIPFeatureExtractor's defaults)
IMAGE_SIZE = 224
IMAGE_MEAN, IMAGE_STD = 0.5862785803043838, 0.27950088968644304
TEXT_MAX_LENGTH = 77  # MedCLIPProcessor / prompts.py: tokenizer.model_max_length = 77
LOGIT_SCALE_MAX = 4.6052  # MedCLIPModel.compute_logits clamps logit_scale to [0, 4.6052]
LAYOUTS = {RESNET50: "MedCLIP ResNet-50", SWIN_TINY: "MedCLIP Swin-T"}
SWIN_FIELDS = ("patch_size", "num_channels", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio",
               "qkv_bias", "use_absolute_embeddings")

PREPROCESSING = (
    "as MedCLIP's MedCLIPProcessor (transformers 4.24 semantics): the 8-bit grey image pasted centred (offsets "
    f"floored) on a black square of side max({IMAGE_SIZE}, width, height), resized to {IMAGE_SIZE}x{IMAGE_SIZE} with "
    f"PIL bicubic, scaled to [0, 1], normalised with mean {IMAGE_MEAN} and std {IMAGE_STD}, the grey channel repeated "
    "to 3 (MedCLIP's evaluation datasets resize with torchvision bilinear instead; the card follows the processor)"
)
TEXT_HANDLING = (
    f"Bio_ClinicalBERT WordPiece, lower-cased (what AutoTokenizer gave upstream), truncated at {TEXT_MAX_LENGTH} "
    "tokens; pooled as the mean over the real tokens of the mean of BERT hidden states 1, 2 and last, then "
    "Linear(768, 512, no bias) and L2 (upstream also averaged the pad positions of a padded batch: cxrtool equals "
    "upstream at batch size 1 and does not depend on batching)"
)


def _resolve(checkpoint: str | Path) -> tuple[Path, str]:
    """(the file to read, the name the default output folder takes): a zip, a .bin, or a folder with the .bin."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if not (path / WEIGHTS_NAME).is_file():
            raise ModelError(f"{path}: no {WEIGHTS_NAME} in this folder",
                             "pass the released medclip-pretrained.zip / medclip-vit-pretrained.zip, the folder it "
                             f"was extracted to, or its {WEIGHTS_NAME}")
        return path / WEIGHTS_NAME, path.name
    return path, path.parent.name if path.name == WEIGHTS_NAME and path.parent.name else path.stem


def _release_member(path: Path) -> str | None:
    """The ``pytorch_model.bin`` member of a released zip, or None (a torch.save file is a zip too)."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as zf:
        members = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == WEIGHTS_NAME]
    if len(members) > 1:
        raise ModelError(f"{path.name}: holds {len(members)} files named {WEIGHTS_NAME} ({', '.join(members)})",
                         "pass the one to import (extract it, or give its folder)")
    return members[0] if members else None


def _state_dict(payload: Any, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(payload, Mapping) or not payload or not all(isinstance(v, torch.Tensor)
                                                                  for v in payload.values()):
        raise ModelError(f"{source}: not a MedCLIP checkpoint (expected the state dict of a MedCLIPModel)",
                         "pass medclip-pretrained.zip / medclip-vit-pretrained.zip or the pytorch_model.bin inside")
    return {str(k): v for k, v in payload.items()}


def detect_variant(state: Mapping[str, torch.Tensor], source: str) -> str:
    """``resnet50`` (MedCLIPVisionModel) or ``swin_tiny`` (MedCLIPVisionModelViT), from the keys."""
    resnet, swin = RESNET_MARK in state, SWIN_MARK in state
    if resnet and swin:
        raise CheckpointMismatchError([], [SWIN_MARK], source, "MedCLIP (one image tower)")
    if not resnet and not swin:
        raise CheckpointMismatchError([f"{RESNET_MARK} or {SWIN_MARK}"], [], source, "MedCLIP")
    return RESNET50 if resnet else SWIN_TINY


def _check_swin_tiny(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse a Swin that is not MedCLIP's Swin-T (cxr_clip's shape reader, over MedCLIP's prefix)."""
    found = swin_config(state, IMAGE_SIZE, source, prefix=BACKBONE, layout=LAYOUTS[SWIN_TINY])
    differ = [f"{f} {getattr(found, f)} (Swin-T: {SWIN_TINY_CONFIG[f]})" for f in SWIN_FIELDS
              if getattr(found, f) != SWIN_TINY_CONFIG[f]]
    if differ:
        raise ModelError(f"{source}: its Swin is not MedCLIP's Swin-T: {'; '.join(differ)}",
                         "MedCLIP released only Swin-T (microsoft/swin-tiny-patch4-window7-224)")


def _text_parts(text_encoder: str) -> tuple[Any, Any]:
    """(untrained BertModel without pooler, tokenizer) of the text tower; its weights come from the checkpoint.
    Bio_ClinicalBERT's tokenizer as MedCLIP's AutoTokenizer made it: WordPiece, lower-cased, 77 tokens."""
    from transformers import BertModel

    quiet_transformers()
    config, tokenizer = text_source(text_encoder, TEXT_MAX_LENGTH)
    return BertModel(config, add_pooling_layer=False), tokenizer


def build_medclip_model(state: Mapping[str, torch.Tensor], text_encoder: str, source: str) -> MedCLIPEncoder:
    """An untrained MedCLIP model with exactly this checkpoint's architecture, card and tokenizer."""
    variant = detect_variant(state, source)
    layout = LAYOUTS[variant]
    if variant == SWIN_TINY:
        _check_swin_tiny(state, source)
    head_key = BACKBONE + "fc.weight" if variant == RESNET50 else VISION + "projection_head.weight"
    if head_key not in state:
        raise CheckpointMismatchError([head_key], [], source, layout)
    if LOGIT_SCALE not in state:
        raise CheckpointMismatchError([LOGIT_SCALE], [], source, layout)
    head = state[head_key]
    bert, tokenizer = _text_parts(text_encoder)
    raw_scale = float(state[LOGIT_SCALE].float().reshape(-1)[0])
    card = ModelCard(
        image=ImageSpec(timm_name=variant, feature_dim=int(head.shape[1]), input_size=IMAGE_SIZE,
                        resize="medclip_pad_square", interpolation="bicubic", mean=[IMAGE_MEAN] * 3,
                        std=[IMAGE_STD] * 3, in_channels=3),
        text=TextSpec(feature_dim=int(bert.config.hidden_size), max_length=TEXT_MAX_LENGTH, pooling="native",
                      source=text_encoder),
        embed_dim=int(head.shape[0]),
        family="medclip",
        scoring=ScoringSpec(rule="softmax", logit_scale=math.exp(min(max(raw_scale, 0.0), LOGIT_SCALE_MAX))),
        projection_bias=False,
    )
    card.validate()
    return build(card, bert, tokenizer)


def _source_key(variant: str) -> Callable[[str], str]:
    """cxrtool model key -> MedCLIP checkpoint key."""

    def source_of(name: str) -> str:
        if name.startswith("image.model."):
            rest = name[len("image.model."):]
            return BACKBONE + (swin_source_key(rest) if variant == SWIN_TINY else rest)
        if name.startswith("image."):
            return VISION + name[len("image."):]
        if name.startswith("text.bert."):
            return TEXT + "model." + name[len("text.bert."):]
        if name.startswith("text."):
            return TEXT + name[len("text."):]
        return name

    return source_of


def import_medclip(checkpoint: str | Path, out_dir: str | Path | None = None, text_encoder: str = DEFAULT_TEXT_ENCODER,
                   overwrite: bool = False) -> ImportReport:
    """Read a MedCLIP checkpoint safely, place every weight by name, write and re-verify a model directory."""
    path, stem = _resolve(checkpoint)
    if out_dir is None:
        out_dir = out_dir_for(None, FORMAT, Path(stem))
    path, out, digest = prepare_import(path, out_dir, FORMAT, overwrite)
    member = _release_member(path)
    source = f"{path.name}:{member}" if member else path.name
    state = _state_dict(read_checkpoint(path, member), source)
    model = build_medclip_model(state, text_encoder, source)
    variant = model.card.image.timm_name
    ignored = sorted(k for k in state if k == LOGIT_SCALE or k.startswith(BERT_POOLER))
    kept = {k: v for k, v in state.items() if k not in ignored}
    obsolete = recomputed_buffers(kept, TEXT + "model.", model.text.bert, BACKBONE, model.image.model)
    used, dropped = place_weights(model, kept, _source_key(variant), obsolete, source,
                                  LAYOUTS[variant])
    tower = "ResNet-50" if variant == RESNET50 else "Swin-T"
    architecture = (f"MedCLIP {tower} + BERT ({model.text.bert.config.num_hidden_layers} layers), "
                    f"{model.card.embed_dim}-d")
    report = ImportReport(format=FORMAT, source=str(path), sha256=digest, tensors=used, dropped=dropped,
                          ignored=ignored, architecture=architecture, licence=LICENCE)
    raw_scale = float(state[LOGIT_SCALE].float().reshape(-1)[0])
    provenance = {
        "name": f"MedCLIP {tower} ({stem})",
        "imported_from": FORMAT,
        "source_file": path.name,
        "source_member": member,
        "source_sha256": digest,
        "licence": LICENCE,
        "intended_use": INTENDED_USE,
        "architecture": architecture,
        "preprocessing": PREPROCESSING,
        "text": TEXT_HANDLING,
        "text_encoder": text_encoder,
        "logit_scale": raw_scale,
        "scoring": f"softmax over exp(clamp(logit_scale, 0, {LOGIT_SCALE_MAX})) * cos, as MedCLIP's compute_logits",
        "dropped_buffers": dropped,
        "ignored_entries": ignored,
        "cxrtool_version": __version__,
    }
    return finish_import(model, out, report, provenance)
