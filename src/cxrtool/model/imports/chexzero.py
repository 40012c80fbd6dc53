"""Import a CheXzero checkpoint (OpenAI-CLIP ViT state dict, ``*.pt``) as a native Hugging Face CLIP model.

CheXzero fine-tuned OpenAI's CLIP ViT-B/32 on MIMIC-CXR and saved ``model.state_dict()``: keys
``visual.*``, ``transformer.*``, ``token_embedding.weight``, ``positional_embedding``, ``ln_final.*``,
``text_projection``, ``logit_scale`` (weights partly float16 when trained on a GPU). The importer
builds a transformers ``CLIPModel`` whose config is read off the tensor shapes (OpenAI's own
``build_model`` rules), places every tensor by name, as transformers' ``convert_clip_original_
pytorch_to_hf`` script does (``attn.in_proj_*`` split into q/k/v, ``text_projection`` and
``visual.proj`` transposed), and refuses any missing or unexpected key. The result is written
through the ``hf-clip`` family (a ``save_pretrained`` directory that transformers also loads, plus
the card), so embed, search, classify and evaluate use it unchanged.

Preprocessing, exactly as CheXzero's ``data_process.preprocess`` / ``zero_shot.py`` did it with
its pinned versions (the card's ``chexzero_letterbox`` rule): the long side scaled to 320 px with
the short side floored (Pillow LANCZOS, its ``Image.ANTIALIAS``), pasted centred on a black 320 px
square, then torchvision 0.11's tensor ``Resize(224, bicubic)`` (no antialias, no clamp); pixel
values are normalised with CheXzero's own statistics, mean 101.48761 and std 83.43944 on the 0-255
scale (not OpenAI's ImageNet-like mean/std).

Tokenizer: OpenAI's CLIP BPE, 77 tokens, lower-cased (CheXzero's ``simple_tokenizer.py``). By
default it is built from the BPE file that the open_clip package ships (the same file CheXzero
reads); ``--tokenizer`` takes a folder or hub name with ``vocab.json`` + ``merges.txt`` (e.g.
``openai/clip-vit-base-patch32``) or a ``bpe_simple_vocab_16e6.txt.gz``.
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cxrtool import __version__
from cxrtool.errors import CheckpointMismatchError, ModelError
from cxrtool.model.card import ImageSpec
from cxrtool.model.imports.common import ImportReport, finish_import, place_weights, prepare_import
from cxrtool.model.imports.safe_pickle import read_checkpoint
from cxrtool.model.sources import quiet_transformers

if TYPE_CHECKING:
    from transformers import CLIPConfig, CLIPTokenizer

FORMAT = "chexzero"
LAYOUT = "CheXzero (OpenAI CLIP ViT)"
# rajpurkarlab/CheXzero LICENSE: Apache 2.0 with the Commons Clause (no selling); the checkpoints
# (Google Drive) carry no licence of their own, derive from OpenAI CLIP (MIT) and were trained on
# MIMIC-CXR (PhysioNet credentialed data use agreement).
LICENCE = ("CheXzero: Apache-2.0 with Commons Clause (no selling; rajpurkarlab/CheXzero); fine-tuned from OpenAI "
           "CLIP (MIT) on MIMIC-CXR (PhysioNet DUA). cxrtool never bundles these weights.")
DEFAULT_TOKENIZER_HUB = "openai/clip-vit-base-patch32"
# CheXzero's Normalize((101.48761,)*3, (83.43944,)*3) on 0-255 pixels, expressed on [0, 1].
CHEXZERO_MEAN = 101.48761 / 255.0
CHEXZERO_STD = 83.43944 / 255.0
CHEXZERO_PAD = 320  # data_process.preprocess(img, desired_size=320)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BPE_MERGES = 49152 - 256 - 2  # merges OpenAI's SimpleTokenizer reads from the BPE file

_LAYER = re.compile(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)$")
_LAYER_PARTS = {  # HF CLIPEncoderLayer name -> OpenAI ResidualAttentionBlock name
    "self_attn.q_proj.weight": "attn.in_proj_weight", "self_attn.k_proj.weight": "attn.in_proj_weight",
    "self_attn.v_proj.weight": "attn.in_proj_weight", "self_attn.q_proj.bias": "attn.in_proj_bias",
    "self_attn.k_proj.bias": "attn.in_proj_bias", "self_attn.v_proj.bias": "attn.in_proj_bias",
    "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}
_FIXED = {  # HF CLIPModel name -> OpenAI CLIP name
    "logit_scale": "logit_scale",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "visual_projection.weight": "visual.proj",
}
_TRANSPOSED = ("text_projection.weight", "visual_projection.weight")  # OpenAI stores x @ W, HF W @ x
_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2}


def openai_source_key(name: str) -> str:
    """A transformers CLIPModel key -> the OpenAI CLIP key its tensor comes from."""
    match = _LAYER.match(name)
    if match:
        tower, index, part = match.groups()
        prefix = "transformer" if tower == "text" else "visual.transformer"
        return f"{prefix}.resblocks.{index}.{_LAYER_PARTS.get(part, part)}"
    return _FIXED.get(name, name)


def openai_to_hf(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The OpenAI tensor reshaped for HF key ``name``: q/k/v thirds of in_proj, projections transposed."""
    if name in _TRANSPOSED:
        return tensor.t().contiguous()
    for proj, third in _QKV.items():
        if f".self_attn.{proj}." in name:
            return tensor.chunk(3, dim=0)[third].contiguous()
    return tensor


def _layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"resblocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _need(state: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointMismatchError([key], [], source, LAYOUT)
    return state[key]


def clip_config(state: Mapping[str, torch.Tensor], tokenizer: Any, source: str) -> CLIPConfig:
    """The CLIPConfig of an OpenAI-CLIP ViT state dict, by OpenAI's build_model rules (heads = width / 64)."""
    from transformers import CLIPConfig

    if "visual.layer1.0.conv1.weight" in state:
        raise ModelError(f"{source}: a ResNet-based CLIP; CheXzero checkpoints (and this importer) are ViT")
    conv = _need(state, "visual.conv1.weight", source)
    vision_width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = round((int(_need(state, "visual.positional_embedding", source).shape[0]) - 1) ** 0.5)
    text_width = int(_need(state, "ln_final.weight", source).shape[0])
    embed_dim = int(_need(state, "text_projection", source).shape[1])
    vocab = int(_need(state, "token_embedding.weight", source).shape[0])
    if int(_need(state, "visual.proj", source).shape[1]) != embed_dim:
        raise ModelError(f"{source}: visual.proj and text_projection project to different widths")
    if len(tokenizer) != vocab:
        raise ModelError(f"{source}: the tokenizer has {len(tokenizer)} tokens, the checkpoint's token_embedding "
                         f"{vocab}", "CheXzero uses OpenAI's CLIP BPE (49,408 tokens); pass that with --tokenizer")
    text_layers, vision_layers = _layers(state, "transformer."), _layers(state, "visual.transformer.")
    mlp = _need(state, "transformer.resblocks.0.mlp.c_fc.weight", source) if text_layers else None
    vmlp = _need(state, "visual.transformer.resblocks.0.mlp.c_fc.weight", source) if vision_layers else None
    text = {"vocab_size": vocab, "hidden_size": text_width, "num_hidden_layers": text_layers,
            "num_attention_heads": max(1, text_width // 64), "max_position_embeddings": int(
                _need(state, "positional_embedding", source).shape[0]),
            "intermediate_size": int(mlp.shape[0]) if mlp is not None else 4 * text_width,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    vision = {"hidden_size": vision_width, "num_hidden_layers": vision_layers,
              "num_attention_heads": max(1, vision_width // 64), "image_size": patch * grid, "patch_size": patch,
              "intermediate_size": int(vmlp.shape[0]) if vmlp is not None else 4 * vision_width,
              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: printable bytes stand for themselves, the rest map above 255, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]


def _bpe_to_vocab_dir(bpe: Path, directory: Path) -> Path:
    """OpenAI's BPE merges file -> vocab.json + merges.txt, built exactly as SimpleTokenizer builds its encoder."""
    with gzip.open(bpe) as fh:
        lines = fh.read().decode("utf-8").split("\n")[1 : BPE_MERGES + 1]
    merges = [line for line in lines if line.strip()]
    byte_tokens = _bytes_to_unicode()
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory


def _from_vocab_dir(directory: Path, context: int = 77) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(directory, model_max_length=context, pad_token=EOS)
    if len(tok) <= 2:  # transformers 5 builds an empty tokenizer, silently, when the files are not there
        raise ValueError("no vocabulary in it")
    return tok


def _hub_vocab_dir(name: str) -> Path:
    """vocab.json + merges.txt of a hub repository (from the Hugging Face cache, else downloaded)."""
    from huggingface_hub import hf_hub_download

    try:
        vocab = Path(hf_hub_download(name, "vocab.json"))
        hf_hub_download(name, "merges.txt")  # lands beside vocab.json in the cache snapshot
        return vocab.parent
    except Exception as exc:  # offline, not cached, unknown repository, HTTP errors of every kind
        raise ModelError(
            f"cannot get the CLIP tokenizer {name!r}: not cached here, and the Hugging Face hub did not provide it "
            f"({type(exc).__name__})",
            f"download vocab.json and merges.txt from https://huggingface.co/{name} into a folder and pass "
            "--tokenizer FOLDER, or pass CheXzero's own bpe_simple_vocab_16e6.txt.gz",
        ) from None


def clip_tokenizer(spec: str | None) -> tuple[Any, str]:
    """CheXzero's tokenizer as a transformers CLIPTokenizer, and where it came from (for provenance)."""
    quiet_transformers()
    bpe: Path | None = None
    if spec is None:
        try:
            from open_clip.tokenizer import default_bpe

            bpe = Path(default_bpe())
        except ImportError:
            spec = DEFAULT_TOKENIZER_HUB
    elif Path(spec).expanduser().is_file():
        bpe = Path(spec).expanduser()
    try:
        if bpe is not None:
            with tempfile.TemporaryDirectory() as tmp:
                return _from_vocab_dir(_bpe_to_vocab_dir(bpe, Path(tmp))), f"OpenAI CLIP BPE ({bpe.name})"
        directory = Path(str(spec)).expanduser()
        return _from_vocab_dir(directory if directory.is_dir() else _hub_vocab_dir(str(spec))), str(spec)
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as exc:
        where = bpe or spec
        raise ModelError(f"--tokenizer {where}: not a CLIP tokenizer ({str(exc).splitlines()[0]})",
                         "pass a folder with vocab.json + merges.txt (e.g. from openai/clip-vit-base-patch32) or "
                         "an OpenAI BPE file such as bpe_simple_vocab_16e6.txt.gz") from None


def _state_dict(payload: Any, source: str) -> dict[str, torch.Tensor]:
    state = payload
    if isinstance(payload, Mapping) and "visual.conv1.weight" not in payload:
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(payload.get(key), Mapping):
                state = payload[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{source}: not a CheXzero checkpoint (expected an OpenAI-CLIP state dict of tensors)",
                         "pass one of CheXzero's released .pt files (torch.save of model.state_dict())")
    return {str(k): v for k, v in state.items()}


def import_chexzero(checkpoint: str | Path, out_dir: str | Path | None = None, tokenizer: str | None = None,
                    overwrite: bool = False) -> ImportReport:
    """Read a CheXzero checkpoint safely, convert it to a transformers CLIPModel, write and re-verify it."""
    from transformers import CLIPImageProcessor, CLIPModel

    from cxrtool.model.families.hf import wrap_hf_model

    path, out, digest = prepare_import(checkpoint, out_dir, FORMAT, overwrite)
    state = _state_dict(read_checkpoint(path), path.name)
    tok, tok_source = clip_tokenizer(tokenizer)
    config = clip_config(state, tok, path.name)
    quiet_transformers()
    native = CLIPModel(config).eval()
    used, dropped = place_weights(native, state, openai_source_key, {}, path.name, LAYOUT, convert=openai_to_hf)
    size, mean, std = int(config.vision_config.image_size), [CHEXZERO_MEAN] * 3, [CHEXZERO_STD] * 3
    # For transformers users of the directory: HF processors cannot pad to a square, so this squashes;
    # cxrtool follows the card (CheXzero's two-step letterbox).
    processor = CLIPImageProcessor(size={"height": size, "width": size}, do_center_crop=False, resample=3,
                                   image_mean=mean, image_std=std)
    name = f"CheXzero {path.stem}"
    model = wrap_hf_model(native, processor, tok, name)
    model.card.image = ImageSpec(feature_dim=int(config.vision_config.hidden_size), input_size=size,
                                 resize="chexzero_letterbox", pad_size=CHEXZERO_PAD, interpolation="bicubic",
                                 mean=mean, std=std)
    model.card.validate()
    dtypes = Counter(str(v.dtype).removeprefix("torch.") for v in state.values())
    report = ImportReport(format=FORMAT, source=str(path), sha256=digest, tensors=used, dropped=dropped,
                          architecture=f"CLIP ViT-{'B' if config.vision_config.hidden_size == 768 else 'custom'}/"
                                       f"{config.vision_config.patch_size} ({size} px) as transformers CLIPModel",
                          licence=LICENCE)
    provenance = {
        "name": name, "imported_from": FORMAT, "source_file": path.name, "source_sha256": digest,
        "source_dtypes": dict(dtypes), "licence": LICENCE, "architecture": report.architecture,
        "tokenizer": tok_source, "preprocessing": "as CheXzero: letterbox to 320 px (Pillow LANCZOS, sides floored), "
        f"then bicubic resize to {size} without antialias, CheXzero mean/std (101.48761, 83.43944 on 0-255)",
        "cxrtool_version": __version__,
    }
    return finish_import(model, out, report, provenance)
