"""Import a released CXR-CLIP checkpoint (``r50_*.tar``, ``swint_*.tar``) as a cxrtool model directory.

The files are torch.save pickles of ``{model, optimizer, scheduler, config, epoch, train_loss}``
(the ``.tar`` suffix is only a name). Only ``model`` is used. Its keys are placed explicitly:

=====================================================  =====================================================
CXR-CLIP key                                           cxrtool model
=====================================================  =====================================================
``image_encoder.resnet.*`` (torchvision ResNet-50)     ``image_backbone.*`` (timm ``resnet50``: same names)
``image_encoder.image_encoder.*`` (HF Swin, 4.x names) ``image_backbone.*`` (HF ``SwinModel``, renamed below)
``text_encoder.text_encoder.*`` (HF BERT)              ``text_backbone.*`` (HF ``BertModel``: same names)
``image_projection.projection.{weight,bias}``          ``image_proj.{weight,bias}``
``text_projection.projection.{weight,bias}``           ``text_proj.{weight,bias}``
``logit_scale``                                        ``logit_scale``
=====================================================  =====================================================

transformers 5 renamed Swin's attention and MLP weights (:data:`SWIN_RENAMES`), so a plain
non-strict ``load_state_dict`` of these files silently leaves every Swin attention/MLP weight random. Here
each needed weight is looked up by name and any gap refuses the import. The buffers that newer
transformers recompute instead of storing (BERT ``position_ids``, Swin ``relative_position_index``)
are dropped only after checking they hold the recomputed values, and are listed in the report.

The Swin-T config is rebuilt from the checkpoint's tensor shapes plus the constants of
``microsoft/swin-tiny-patch4-window7-224`` (GELU, LayerNorm eps 1e-5, no absolute position
embeddings), so no download is needed for the image tower. The text tower's config and tokenizer
come from ``--text-encoder`` (hub name or local folder); its weights come from the checkpoint.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cxrtool import __version__
from cxrtool.constants import CXR_CLIP_TEXT_ENCODER
from cxrtool.errors import CheckpointMismatchError, ModelError
from cxrtool.model.card import ImageSpec, ModelCard, TextSpec
from cxrtool.model.dual import DualEncoder
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

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase, SwinConfig

FORMAT = "cxr-clip"
DEFAULT_TEXT_ENCODER = CXR_CLIP_TEXT_ENCODER
# kakaobrain/cxr-clip: LICENSE file is CC BY-NC-SA 4.0 (the README says CC BY-NC 4.0).
LICENCE = "CC BY-NC-SA 4.0 (non-commercial; kakaobrain/cxr-clip). cxrtool never bundles these weights."

RESNET_PREFIX = "image_encoder.resnet."
SWIN_PREFIX = "image_encoder.image_encoder."
TEXT_PREFIX = "text_encoder.text_encoder."
HEADS = {
    "image_proj.weight": "image_projection.projection.weight",
    "image_proj.bias": "image_projection.projection.bias",
    "text_proj.weight": "text_projection.projection.weight",
    "text_proj.bias": "text_projection.projection.bias",
    "logit_scale": "logit_scale",
}
# Swin block weights: (transformers 4.x name, transformers 5.x name), as prefixes of the key after
# "encoder.layers.I.blocks.J."; the same renames as transformers' own conversion mapping for swin.
SWIN_RENAMES = (
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)
_BLOCK = re.compile(r"^(encoder\.layers\.\d+\.blocks\.\d+\.)(.*)$")

# The preprocessing contract CXR-CLIP trained and evaluated with (its data_utils.transform_image and
# configs/transform: torchvision Resize(int) + CenterCrop at base.image_size on a PIL image, i.e. the
# long side floored and the crop offset rounded: the card's torchvision_center_crop rule; 8-bit
# images as RGB).
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ResNet ("imagenet")
HF_MEAN, HF_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]  # Swin ("huggingface")
IMAGE_SIZE = 224  # configs/train.yaml base.image_size
TEXT_MAX_LENGTH = 256  # configs/train.yaml base.text_max_length
POOLINGS = {"eos": "eos", "bos": "cls", "mean": "mean"}  # CXR-CLIP name -> card name


def swin_source_key(name: str) -> str:
    """A transformers-5 SwinModel key -> the transformers-4 key CXR-CLIP saved it under."""
    match = _BLOCK.match(name)
    if match:
        head, rest = match.groups()
        for old, new in SWIN_RENAMES:
            if rest.startswith(new):
                return head + old + rest[len(new):]
    return name


def _architecture(state: Mapping[str, Any], source: str) -> str:
    resnet, swin = (sorted(k for k in state if k.startswith(p)) for p in (RESNET_PREFIX, SWIN_PREFIX))
    if resnet and swin:
        raise CheckpointMismatchError([], resnet[:1] + swin[:1], source, "CXR-CLIP (one image tower)")
    if not resnet and not swin:
        raise CheckpointMismatchError([RESNET_PREFIX + "* or " + SWIN_PREFIX + "*"], [], source, "CXR-CLIP")
    return "resnet50" if resnet else "swin"


def _split_payload(payload: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str]]:
    """The state dict, the (plain) training config + epoch/loss, and the names of unused entries."""
    if isinstance(payload, Mapping) and "model" in payload:
        state, rest = payload["model"], {k: v for k, v in payload.items() if k != "model"}
    elif isinstance(payload, Mapping) and "logit_scale" in payload:
        state, rest = payload, {}  # a bare state dict (someone saved ckpt["model"] alone)
    else:
        found = sorted(map(str, payload))[:6] if isinstance(payload, Mapping) else type(payload).__name__
        raise ModelError(f"{source}: not a CXR-CLIP checkpoint (expected a dict with 'model'; found {found})",
                         "pass one of the released r50_*.tar / swint_*.tar files")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{source}: its 'model' entry is not a state dict of tensors")
    meta = {k: plain(rest[k]) for k in ("config", "epoch", "train_loss") if k in rest}
    ignored = sorted(str(k) for k in rest if k not in ("config", "epoch", "train_loss"))
    return dict(state), meta, ignored


def _need(state: Mapping[str, torch.Tensor], key: str, source: str, layout: str = "CXR-CLIP") -> torch.Tensor:
    if key not in state:
        raise CheckpointMismatchError([key], [], source, layout)
    return state[key]


def swin_config(state: Mapping[str, torch.Tensor], image_size: int, source: str, prefix: str = SWIN_PREFIX,
                layout: str = "CXR-CLIP") -> SwinConfig:
    """Swin-T's HF config, from the shapes of a checkpoint's transformers-4.x Swin (keys under ``prefix``) + the
    constants of microsoft/swin-tiny-patch4-window7-224 (MedCLIP's Swin is stored the same way)."""
    from transformers import SwinConfig

    p = prefix
    proj = _need(state, p + "embeddings.patch_embeddings.projection.weight", source, layout)
    embed_dim, channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    blocks: dict[int, int] = {}
    for key in state:
        m = re.match(re.escape(p) + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise CheckpointMismatchError([p + "encoder.layers.N.blocks.M.*"], [], source, layout)
    depths = [blocks[i] for i in range(len(blocks))]
    table = f"encoder.layers.{{}}.blocks.0.{SWIN_RENAMES[3][0]}"
    heads = [int(_need(state, p + table.format(i), source, layout).shape[1]) for i in range(len(depths))]
    rows = int(state[p + table.format(0)].shape[0])
    window = (math.isqrt(rows) + 1) // 2
    if (2 * window - 1) ** 2 != rows:
        raise ModelError(f"{source}: relative position table of {rows} rows fits no square window")
    fc1 = _need(state, p + "encoder.layers.0.blocks.0.intermediate.dense.weight", source, layout)
    return SwinConfig(
        image_size=image_size, patch_size=patch, num_channels=channels, embed_dim=embed_dim, depths=depths,
        num_heads=heads, window_size=window, mlp_ratio=fc1.shape[0] / embed_dim,
        qkv_bias=p + "encoder.layers.0.blocks.0.attention.self.query.bias" in state,
        use_absolute_embeddings=p + "embeddings.position_embeddings" in state,
        hidden_act="gelu", layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        drop_path_rate=0.1,
    )


def _text_parts(text_encoder: str) -> tuple[PretrainedConfig, PreTrainedTokenizerBase]:
    """Config + tokenizer of the text tower (its weights come from the checkpoint)."""
    from transformers import AutoConfig, AutoTokenizer

    quiet_transformers()
    try:
        config, tokenizer = AutoConfig.from_pretrained(text_encoder), AutoTokenizer.from_pretrained(text_encoder)
    except (OSError, ValueError) as exc:
        if Path(text_encoder).expanduser().is_dir():
            raise ModelError(f"--text-encoder {text_encoder}: no usable config.json + tokenizer there "
                             f"({str(exc).splitlines()[0]})",
                             "the folder needs the model's config.json and vocab.txt (or tokenizer.json)") from None
        raise ModelError(
            f"cannot get the config and tokenizer of text encoder {text_encoder!r}: not cached here and the "
            "Hugging Face hub is unreachable",
            f"download config.json and vocab.txt from https://huggingface.co/{text_encoder} into a folder and pass "
            "--text-encoder FOLDER (no weights needed: they come from the checkpoint)",
        ) from None
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    # transformers builds a near-empty tokenizer, silently, from a folder that lacks the vocabulary file.
    if not 0.9 * vocab <= len(tokenizer) <= vocab:
        raise ModelError(f"--text-encoder {text_encoder}: its tokenizer has {len(tokenizer)} tokens for the text "
                         f"tower's {vocab} embeddings",
                         "the folder needs the vocab.txt (or tokenizer.json) of the model its config.json describes")
    return config, tokenizer


def build_cxr_clip_model(state: Mapping[str, torch.Tensor], config: Any, text_encoder: str,
                         source: str) -> DualEncoder:
    """An untrained DualEncoder with exactly the architecture and preprocessing of this checkpoint."""
    import timm
    from transformers import AutoModel

    arch = _architecture(state, source)
    image_size = int(config_value(config, "base", "image_size") or IMAGE_SIZE)
    pooling_name = config_value(config, "model", "text_encoder", "pooling") or "eos"
    if pooling_name not in POOLINGS:
        raise ModelError(f"{source}: text pooling {pooling_name!r} is not one cxrtool knows ({', '.join(POOLINGS)})")
    head = _need(state, HEADS["image_proj.weight"], source)
    text_config, tokenizer = _text_parts(text_encoder)
    text = AutoModel.from_config(text_config)
    if arch == "resnet50":
        image = timm.create_model("resnet50", pretrained=False, num_classes=0)
        spec = ImageSpec(timm_name="resnet50", feature_dim=2048, input_size=image_size, interpolation="bilinear",
                         resize="torchvision_center_crop", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    else:
        image = AutoModel.from_config(swin_config(state, image_size, source))
        spec = ImageSpec(timm_name="", backend="hf", feature="first_token", feature_dim=int(image.num_features),
                         input_size=image_size, interpolation="bilinear", resize="torchvision_center_crop",
                         mean=HF_MEAN, std=HF_STD)
    card = ModelCard(
        image=spec,
        text=TextSpec(feature_dim=int(text_config.hidden_size),
                      max_length=int(config_value(config, "base", "text_max_length") or TEXT_MAX_LENGTH),
                      pooling=POOLINGS[pooling_name], source=text_encoder),
        embed_dim=int(head.shape[0]),
        projection_bias=True,
    )
    card.validate()
    return DualEncoder(card, image, text, tokenizer)


def _source_key(arch: str) -> Callable[[str], str]:
    def source_of(name: str) -> str:
        if name.startswith("image_backbone."):
            rest = name[len("image_backbone."):]
            return RESNET_PREFIX + rest if arch == "resnet50" else SWIN_PREFIX + swin_source_key(rest)
        if name.startswith("text_backbone."):
            return TEXT_PREFIX + name[len("text_backbone."):]
        return HEADS.get(name, name)

    return source_of


def import_cxr_clip(checkpoint: str | Path, out_dir: str | Path | None = None, text_encoder: str = DEFAULT_TEXT_ENCODER,
                    overwrite: bool = False) -> ImportReport:
    """Read a CXR-CLIP checkpoint safely, place every weight by name, write and re-verify a model directory."""
    path, out, digest = prepare_import(checkpoint, out_dir, FORMAT, overwrite)
    state, meta, ignored = _split_payload(read_checkpoint(path), path.name)
    arch = _architecture(state, path.name)
    model = build_cxr_clip_model(state, meta.get("config"), text_encoder, path.name)
    layout = "CXR-CLIP ResNet-50" if arch == "resnet50" else "CXR-CLIP Swin-T"
    obsolete = recomputed_buffers(state, TEXT_PREFIX, model.text_backbone, SWIN_PREFIX, model.image_backbone)
    used, dropped = place_weights(model, state, _source_key(arch), obsolete, path.name, layout)
    epoch = meta.get("epoch")
    report = ImportReport(
        format=FORMAT, source=str(path), sha256=digest, tensors=used, dropped=dropped, ignored=ignored,
        architecture=f"{'ResNet-50' if arch == 'resnet50' else 'Swin-T'} + {type(model.text_backbone).__name__}",
        epoch=epoch if isinstance(epoch, int) else None, licence=LICENCE,
    )
    provenance = {
        "name": f"CXR-CLIP {path.stem}",
        "imported_from": FORMAT,
        "source_file": path.name,
        "source_sha256": digest,
        "epoch": report.epoch,
        "train_loss": meta.get("train_loss") if isinstance(meta.get("train_loss"), (int, float)) else None,
        "licence": LICENCE,
        "architecture": report.architecture,
        "text_encoder": text_encoder,
        "image_config": "Swin-T constants + checkpoint shapes" if arch == "swin" else "timm resnet50",
        "dropped_buffers": dropped,
        "ignored_entries": ignored,
        "cxrtool_version": __version__,
    }
    return finish_import(model, out, report, provenance)
