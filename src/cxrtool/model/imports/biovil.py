"""Import Microsoft's BioViL / BioViL-T (hi-ml-multimodal) from the Hugging Face hub or a local snapshot.

Each model is two files of weights in one hub repository, plus the text tower's config and vocabulary:

- ``microsoft/BiomedVLP-CXR-BERT-specialized`` (BioViL; hi-ml pins revision ``v1.1``):
  ``biovil_image_resnet50_proj_size_128.pt`` (hi-ml ``ImageModel("resnet50", 128)`` state dict);
- ``microsoft/BiomedVLP-BioViL-T`` (hi-ml pins ``v1.0``): ``biovil_t_image_model_proj_size_128.pt``
  (``ImageModel("resnet50_multi_image", 128)``);
- both: ``pytorch_model.bin`` (or ``model.safetensors``, preferred when present) of hi-ml's
  ``CXRBertModel``, ``config.json`` and ``vocab.txt``.

Only these named files are read: never the repository's ``.py`` files, never ``trust_remote_code``,
never ``AutoConfig``/``AutoModel`` (the hub config names a remote-code model type; only its BERT
fields are kept). Pickles (``.pt``/``.bin``) are read through cxrtool's safe unpickler.

Every tensor is placed by name (hi-ml's names, see :mod:`cxrtool.model.families.biovil`) or the import
is refused naming it. Left out on purpose, and listed in the report's ``ignored``: the ResNet's
``fc`` (hi-ml's ``ResNetHIML`` never calls it), BioViL-T's temporal ``vit_pooler`` (it runs only when a
prior image is given; cxrtool embeds one image at a time) and CXR-BERT's masked-language-model head
``cls.predictions``; ``bert.embeddings.position_ids`` is dropped after checking it is 0..511.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cxrtool import __version__
from cxrtool.errors import ModelError
from cxrtool.model.card import ImageSpec, ModelCard, ScoringSpec, TextSpec
from cxrtool.model.families.biovil import MULTI, SINGLE, STRIP, TRUNK_DIM, VIT_DIM, BioViLModel, build
from cxrtool.model.families.seed import bert_config, bert_tokenizer
from cxrtool.model.imports.common import ImportReport, check_out_dir, finish_import, out_dir_for, place_weights
from cxrtool.model.imports.safe_pickle import read_checkpoint, sha256_file
from cxrtool.model.sources import quiet_transformers

CONFIG, VOCAB = "config.json", "vocab.txt"
TEXT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # the first one present is read
PAD_SIZE = 512  # hi-ml image/utils.py TRANSFORM_RESIZE
MAX_TOKENS = 512  # CXR-BERT's max_position_embeddings; hi-ml's TextInferenceEngine refuses longer inputs
# hi-ml's zero-shot code (ImageTextInferenceEngine, its pneumonia example) compares raw cosine
# similarities and releases no training temperature (microsoft/hi-ml#894: no training code or loss
# settings published). A softmax needs one: 1 / 0.5, the global-alignment temperature tau_1 = 0.5 as
# cxrtool reads the BioViL paper. It changes only how peaked the probabilities are, never the ranking
# or the predicted class.
LOGIT_SCALE = 2.0

# hi-ml-multimodal: "Licensed under the MIT License (MIT)" (file headers, wheel metadata); the hub
# repositories carry the licence tag mit.
LICENCE_CODE = "MIT (hi-ml-multimodal code; hub licence tag mit for the weights"
INTENDED_USE = ("research use only: Microsoft's BiomedVLP model cards limit use to future vision-language "
                "research and reproducing the paper, and hi-ml says \"the examples and models are not intended "
                "for deployed use cases (commercial or otherwise), which is currently out-of-scope\"; not for "
                "clinical use")


@dataclass(frozen=True)
class Variant:
    """What differs between BioViL and BioViL-T."""

    name: str  # the import format / CLI command
    label: str
    hub: str
    revision: str  # the tag hi-ml-multimodal 0.2.2 loads (image/model/pretrained.py)
    image_file: str
    arch: str  # card.image.timm_name
    input_size: int  # hi-ml image/utils.py get_image_inference centre crop
    trained_on: str
    paper: str


VARIANTS = {
    "biovil": Variant("biovil", "BioViL", "microsoft/BiomedVLP-CXR-BERT-specialized", "v1.1",
                      "biovil_image_resnet50_proj_size_128.pt", SINGLE, 480,
                      "PubMed, MIMIC-III and MIMIC-CXR (text); MIMIC-CXR (image-text)",
                      "Boecking et al., ECCV 2022"),
    "biovil-t": Variant("biovil-t", "BioViL-T", "microsoft/BiomedVLP-BioViL-T", "v1.0",
                        "biovil_t_image_model_proj_size_128.pt", MULTI, 448,
                        "PubMed, MIMIC-III and MIMIC-CXR (text); MIMIC-CXR with prior studies (image-text)",
                        "Bannur et al., CVPR 2023"),
}

# Tensors of the released files that embedding never uses (exact names; anything else unplaced refuses).
_FC = re.compile(r"^encoder\.encoder\.fc\.(weight|bias)$")
_VIT_POOLER = re.compile(r"^encoder\.vit_pooler\.(type_embed|norm_post\.(weight|bias)|blocks\.\d+\.("
                         r"norm[12]\.(weight|bias)|attn\.proj_[qkv]\.weight|attn\.proj\.(weight|bias)|"
                         r"mlp\.fc[12]\.(weight|bias)))$")
_MLM_HEAD = re.compile(r"^cls\.predictions\.(bias|decoder\.(weight|bias)|transform\.(dense|LayerNorm)\.(weight|bias))$")
POSITION_IDS = "bert.embeddings.position_ids"


def _fetch_hint(v: Variant, hub: str) -> str:
    return (f"download {CONFIG}, {VOCAB}, pytorch_model.bin (or model.safetensors) and {v.image_file} from "
            f"https://huggingface.co/{hub} (revision {v.revision if hub == v.hub else 'main'}) into one folder, e.g. "
            f"`huggingface-cli download {hub} {CONFIG} {VOCAB} pytorch_model.bin {v.image_file} --local-dir DIR"
            f"{f' --revision {v.revision}' if hub == v.hub else ''}`, and pass that folder")


def _local_files(folder: Path, v: Variant) -> dict[str, Path]:
    files = {name: folder / name for name in (CONFIG, VOCAB, v.image_file)}
    text = next((folder / n for n in TEXT_WEIGHTS if (folder / n).is_file()), None)
    lacking = [name for name, p in files.items() if not p.is_file()] + ([] if text else [" or ".join(TEXT_WEIGHTS)])
    if lacking:
        hint = _fetch_hint(v, v.hub)
        if (folder / VARIANTS["biovil" if v.name == "biovil-t" else "biovil-t"].image_file).is_file():
            hint = f"this folder holds the other model's image weights: use `cxrtool import " \
                   f"{'biovil' if v.name == 'biovil-t' else 'biovil-t'}`"
        raise ModelError(f"{folder}: a {v.label} snapshot needs {', '.join(lacking)}", hint)
    files["text"] = text  # type: ignore[assignment]
    return files


def _hub_files(name: str, v: Variant) -> dict[str, Path]:
    """The named files of a hub repository, from the Hugging Face cache or downloaded (nothing else)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    revision = v.revision if name == v.hub else None

    def get(filename: str) -> Path:
        return Path(hf_hub_download(name, filename, revision=revision))

    try:
        files = {f: get(f) for f in (CONFIG, VOCAB, v.image_file)}
        for candidate in TEXT_WEIGHTS:
            try:
                files["text"] = get(candidate)
                break
            except EntryNotFoundError:  # the repository (at this revision) has no such file: try the next
                continue
        else:
            raise EntryNotFoundError(f"{name} has none of {', '.join(TEXT_WEIGHTS)}")
    except Exception as exc:  # offline and not cached, unknown repository or revision, HTTP errors of every kind
        raise ModelError(f"cannot get {v.label} from the Hugging Face hub ({name}): not cached here, and the hub "
                         f"did not provide it ({type(exc).__name__})", _fetch_hint(v, name)) from None
    return files


def resolve_source(source: str | Path, v: Variant) -> tuple[dict[str, Path], str]:
    """(the files to read, where they came from): a local snapshot folder, else a hub repository."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _local_files(path, v), str(path.resolve())
    if path.exists():
        raise ModelError(f"{path}: give the folder holding the {v.label} files, not one file", _fetch_hint(v, v.hub))
    from cxrtool.model.hub import looks_like_hub_name

    if not looks_like_hub_name(str(source)):
        raise ModelError(f"{source}: no such folder, and not a hub name", _fetch_hint(v, v.hub))
    return _hub_files(str(source), v), f"hf-hub:{source}" + (f"@{v.revision}" if str(source) == v.hub else "")


def _tensors(payload: Any, source: str, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(payload, Mapping) or not payload or not all(isinstance(t, torch.Tensor)
                                                                  for t in payload.values()):
        raise ModelError(f"{source}: not a {what} state dict (expected a mapping of names to tensors)",
                         "pass the files of the hub repository unchanged")
    return {str(k): t for k, t in payload.items()}


def read_text_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{path.name}: unreadable safetensors file ({exc})") from None
    return _tensors(read_checkpoint(path), path.name, "CXR-BERT")


def _split(state: Mapping[str, torch.Tensor], unused: list[tuple[re.Pattern[str], str]]
           ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the tensors to place, one line per group of known-unused tensors left out)."""
    kept, notes = dict(state), []
    for pattern, why in unused:
        hits = [k for k in kept if pattern.match(k)]
        for k in hits:
            del kept[k]
        if hits:
            notes.append(f"{why} ({len(hits)} tensor{'s' if len(hits) > 1 else ''}: {hits[0]}"
                         f"{' ...' if len(hits) > 1 else ''})")
    return kept, notes


def _read_config(path: Path) -> dict[str, Any]:
    try:
        fields = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable config ({exc})".splitlines()[0]) from None
    if not isinstance(fields, dict) or "hidden_size" not in fields or "vocab_size" not in fields:
        raise ModelError(f"{path}: not a CXR-BERT config (no hidden_size / vocab_size)")
    return fields


def _card(v: Variant, fields: dict[str, Any], joint: int, text_source: str) -> ModelCard:
    image = ImageSpec(timm_name=v.arch, feature_dim=2 * VIT_DIM if v.arch == MULTI else TRUNK_DIM,
                      input_size=v.input_size, resize="biovil_resize_crop", pad_size=PAD_SIZE, interpolation="bilinear",
                      mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], in_channels=3)
    text = TextSpec(feature_dim=int(fields["hidden_size"]), max_length=MAX_TOKENS, pooling="native",
                    source=text_source, padding="longest")
    card = ModelCard(image=image, text=text, embed_dim=joint, family="biovil",
                     scoring=ScoringSpec(rule="softmax", logit_scale=LOGIT_SCALE))
    card.validate()
    return card


def _place(module: torch.nn.Module, state: Mapping[str, torch.Tensor], obsolete: Mapping[str, torch.Tensor],
           source: str, layout: str) -> tuple[int, list[str]]:
    return place_weights(module, state, _same_name, obsolete, source, layout)


def _same_name(name: str) -> str:
    """The checkpoint key of a module tensor: hi-ml's names are the family module's names."""
    return name


def import_biovil(source: str | Path, out_dir: str | Path | None = None, variant: str = "biovil",
                  overwrite: bool = False) -> ImportReport:
    """Read a BioViL / BioViL-T snapshot (hub name or folder) safely, place every weight, write and re-verify."""
    if variant not in VARIANTS:
        raise ModelError(f"unknown BioViL variant {variant!r}; use one of {', '.join(VARIANTS)}")
    v = VARIANTS[variant]
    name = Path(str(source)).expanduser().resolve().name if Path(str(source)).expanduser().is_dir() else str(source)
    out = out_dir_for(out_dir, v.name, Path(name))
    check_out_dir(out, overwrite)
    files, where = resolve_source(source, v)
    image_path, text_path = files[v.image_file], files["text"]

    image_state = _tensors(read_checkpoint(image_path), image_path.name, f"{v.label} image")
    first = image_state.get("projector.model.0.weight")
    wanted_in = 2 * VIT_DIM if v.arch == MULTI else TRUNK_DIM
    if first is not None and first.ndim == 4 and int(first.shape[1]) in (TRUNK_DIM, 2 * VIT_DIM) \
            and int(first.shape[1]) != wanted_in:
        other = "biovil-t" if v.arch == SINGLE else "biovil"
        raise ModelError(f"{image_path.name}: these are {VARIANTS[other].label} image weights, not {v.label}'s",
                         f"use `cxrtool import {other}`")
    unused = [(_FC, "encoder.encoder.fc.*: the ResNet classifier, which hi-ml never calls")]
    if v.arch == MULTI:
        unused.append((_VIT_POOLER, "encoder.vit_pooler.*: BioViL-T's temporal pooler, used only with a prior image"))
    image_state, ignored = _split(image_state, unused)
    text_state, text_ignored = _split(read_text_weights(text_path),
                                      [(_MLM_HEAD, "cls.predictions.*: CXR-BERT's masked-language-model head")])
    ignored += text_ignored

    fields = _read_config(files[CONFIG])
    joint = int(fields.get("projection_size", 128))
    projector = image_state.get("projector.model.3.weight")
    if projector is not None and int(projector.shape[0]) != joint:
        raise ModelError(f"{image_path.name}: the image projection is {int(projector.shape[0])}-d, the text config's "
                         f"projection_size {joint}", "the image and text files come from different models")
    quiet_transformers()
    from transformers import BertModel

    config = bert_config(fields)
    tokenizer = bert_tokenizer(files[VOCAB], lower=True, max_length=MAX_TOKENS)
    if len(tokenizer) != config.vocab_size:
        raise ModelError(f"{files[VOCAB].name}: {len(tokenizer)} tokens for the config's {config.vocab_size} "
                         "embeddings", "the vocabulary and the config come from different models")
    card = _card(v, fields, joint, where)
    model: BioViLModel = build(card, BertModel(config, add_pooling_layer=False), tokenizer).eval()
    positions = torch.arange(int(config.max_position_embeddings))[None]
    used_image, _ = _place(model.image, image_state, {}, image_path.name, f"{v.label} image (hi-ml ImageModel)")
    used_text, dropped = _place(model.text, text_state, {POSITION_IDS: positions}, text_path.name,
                                "CXR-BERT (hi-ml CXRBertModel)")

    digest, text_digest = sha256_file(image_path), sha256_file(text_path)
    architecture = (f"{v.label}: ResNet-50 to layer4"
                    + (" + 1x1 conv 2048->256 and the missing-prior embedding (512 ch)" if v.arch == MULTI else "")
                    + f", per-patch MLP projector, spatial mean -> {joint}-d; CXR-BERT "
                    f"({config.num_hidden_layers} layers, {config.hidden_size} wide) + [CLS] projection head -> "
                    f"{joint}-d")
    licence = f"{LICENCE_CODE} of {v.hub}); trained on {v.trained_on}"
    report = ImportReport(format=v.name, source=where, sha256=digest, architecture=architecture,
                          tensors=used_image + used_text, dropped=dropped, ignored=ignored, licence=licence)
    provenance = {
        "name": f"{v.label} ({name})", "imported_from": v.name, "source": where,
        "source_file": image_path.name, "source_sha256": digest,
        "text_source_file": text_path.name, "text_source_sha256": text_digest,
        "licence": licence, "intended_use": INTENDED_USE, "paper": v.paper, "architecture": architecture,
        "preprocessing": (f"as hi-ml-multimodal's inference transform: the file's values min-max stretched to 0-255 "
                          f"and truncated to 8 bits (load_image), PIL bilinear resize of the short side to {PAD_SIZE} "
                          f"(long side floored), centre crop {v.input_size} (offsets rounded half to even), "
                          "[0, 1], gray copied to 3 channels, no mean/std normalisation"),
        "text": (f"CXR-BERT WordPiece (BertTokenizerFast over {VOCAB}, lower-cased) after stripping trailing "
                 f"{STRIP!r} as hi-ml does, padded to the longest text; at most {MAX_TOKENS} tokens (hi-ml refuses "
                 "longer texts, cxrtool truncates them); the last layer's [CLS] vector through CXR-BERT's projection "
                 f"head (Linear, GELU, LayerNorm, Linear) to {joint}-d, L2-normalised"),
        "scoring": (f"hi-ml compares cosine similarities; softmax probabilities here use logit_scale {LOGIT_SCALE} "
                    "(1 / tau_1 = 0.5 of the BioViL paper; no temperature is released with the weights), which "
                    "never changes a ranking or the predicted class"),
        "left_out": ("the ResNet classifier fc (unused upstream)"
                     + (", BioViL-T's temporal vit_pooler (runs only with a prior image: cxrtool embeds each image "
                        "alone, as hi-ml does without a prior)" if v.arch == MULTI else "")
                     + ", CXR-BERT's masked-language-model head; patch-level (grounding) embeddings are not used "
                     "for search"),
        "cxrtool_version": __version__,
    }
    return finish_import(model, out, report, provenance)
