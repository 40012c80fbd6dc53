"""Synthetic checkpoints in the released layouts, and hand-written reference forwards over their tensors.

The layouts are written out key by key from the documented formats (REFERENCE.md §1 and §2, the
transformers-4.26 module names), independently of the installed transformers: BERT and Swin keys
as CXR-CLIP saved them (``attention.self.query``, ``intermediate.dense``, ``position_ids`` and
``relative_position_index`` buffers), OpenAI-CLIP keys as CheXzero saved them. The reference
forwards read those tensors by their *checkpoint* names, so an importer that mis-placed a tensor
(say query and key swapped) gives different embeddings from them.

CXR-CLIP's ``config`` is OmegaConf objects (ListConfig leaves under plain dicts). The classes here
pickle under OmegaConf's module names while :func:`omegaconf_lookalike` is active, so the saved file
names exactly the globals a real one does (tests/data/omegaconf-2.3-config.pt is a real one).
"""

from __future__ import annotations

import math
import sys
import types
import typing
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- OmegaConf look-alike


class ContainerMetadata:
    def __init__(self, **fields):
        self.__dict__.update(fields)


class Metadata(ContainerMetadata):
    pass


class AnyNode:
    def __init__(self, value, parent, key):
        self._metadata = Metadata(ref_type=typing.Any, object_type=None, optional=True, key=key, flags=None,
                                  flags_root=False, resolver_cache=defaultdict(dict))
        self._parent = parent
        self._val = value


class DictConfig:
    def __init__(self, content: dict, parent=None, key=None):
        self._metadata = ContainerMetadata(ref_type=typing.Any, object_type=dict, optional=True, key=key,
                                           flags={"struct": True}, flags_root=False,
                                           resolver_cache=defaultdict(dict), key_type=typing.Any,
                                           element_type=typing.Any)
        self._parent = parent
        self._content = {k: AnyNode(v, self, k) for k, v in content.items()}


class ListConfig:
    def __init__(self, items: list, parent=None, key=None):
        self._metadata = ContainerMetadata(ref_type=typing.Any, object_type=list, optional=True, key=key, flags={},
                                           flags_root=False, resolver_cache=defaultdict(dict), key_type=int,
                                           element_type=typing.Any)
        self._parent = parent
        self._content = [AnyNode(v, self, i) for i, v in enumerate(items)]


_OMEGACONF = {"omegaconf.base": (ContainerMetadata, Metadata), "omegaconf.nodes": (AnyNode,),
              "omegaconf.dictconfig": (DictConfig,), "omegaconf.listconfig": (ListConfig,)}


@contextmanager
def omegaconf_lookalike():
    """While active, the classes above pickle as omegaconf.base.ContainerMetadata, ... (as real ones do)."""
    saved = {}
    package = types.ModuleType("omegaconf")
    package.__path__ = []
    sys.modules["omegaconf"] = package
    for module_name, classes in _OMEGACONF.items():
        module = types.ModuleType(module_name)
        for cls in classes:
            setattr(module, cls.__name__, cls)
            saved[cls] = cls.__module__
            cls.__module__ = module_name
        sys.modules[module_name] = module
        setattr(package, module_name.split(".")[1], module)
    try:
        yield
    finally:
        for module_name in ("omegaconf", *_OMEGACONF):
            sys.modules.pop(module_name, None)
        for cls, module_name in saved.items():
            cls.__module__ = module_name


def cxr_clip_config(image: str, image_size: int, text_max_length: int) -> dict:
    """The shape of CXR-CLIP's saved config: convert_dictconfig_to_dict leaves ListConfig values in place."""
    base = {"seed": 1234, "amp": True, "image_size": image_size, "text_max_length": text_max_length,
            "loss_best": "contrastive", "data_frac": 1.0}
    parent = DictConfig({"RandomResizedCrop": None})
    return {
        "base": base,
        "model": {"name": "clip_custom", "temperature": 0.07,
                  "image_encoder": {"source": "huggingface" if image == "swin" else "cnn",
                                    "name": "swin" if image == "swin" else "resnet", "model_type": image},
                  "text_encoder": {"source": "huggingface", "name": "emilyalsentzer/Bio_ClinicalBERT",
                                   "pooling": "eos"},
                  "projection_head": {"name": "linear", "dropout": 0.1, "proj_dim": 512}},
        "transform": {"train": {"RandomResizedCrop": {"size": image_size,
                                                      "scale": ListConfig([0.8, 1.1], parent, "scale")}}},
        "tokenizer": {"source": "huggingface", "pretrained_model_name_or_path": "emilyalsentzer/Bio_ClinicalBERT"},
    }


# ------------------------------------------------------------------------------------ layouts


def _fill(shapes: dict[str, tuple[int, ...]], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random values that keep activations sane: LayerNorm weights near 1, everything else small."""
    out = {}
    for name, shape in shapes.items():
        if name.endswith(("LayerNorm.weight", "norm.weight", "layernorm_before.weight", "layernorm_after.weight",
                          "layernorm.weight", "ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight",
                          "ln_final.weight")):
            out[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            out[name] = 0.05 * torch.randn(shape, generator=gen)
    return out


def bert_4x_state(prefix: str, vocab: int, hidden: int, layers: int, intermediate: int, max_positions: int,
                  gen: torch.Generator) -> dict[str, torch.Tensor]:
    """BERT as transformers 4.26 saved it (persistent position_ids buffer included)."""
    h, i = hidden, intermediate
    shapes = {"embeddings.word_embeddings.weight": (vocab, h),
              "embeddings.position_embeddings.weight": (max_positions, h),
              "embeddings.token_type_embeddings.weight": (2, h), "embeddings.LayerNorm.weight": (h,),
              "embeddings.LayerNorm.bias": (h,)}
    for n in range(layers):
        p = f"encoder.layer.{n}."
        for proj in ("query", "key", "value"):
            shapes[f"{p}attention.self.{proj}.weight"] = (h, h)
            shapes[f"{p}attention.self.{proj}.bias"] = (h,)
        shapes.update({f"{p}attention.output.dense.weight": (h, h), f"{p}attention.output.dense.bias": (h,),
                       f"{p}attention.output.LayerNorm.weight": (h,), f"{p}attention.output.LayerNorm.bias": (h,),
                       f"{p}intermediate.dense.weight": (i, h), f"{p}intermediate.dense.bias": (i,),
                       f"{p}output.dense.weight": (h, i), f"{p}output.dense.bias": (h,),
                       f"{p}output.LayerNorm.weight": (h,), f"{p}output.LayerNorm.bias": (h,)})
    shapes.update({"pooler.dense.weight": (h, h), "pooler.dense.bias": (h,)})
    state = {prefix + k: v for k, v in _fill(shapes, gen).items()}
    state[prefix + "embeddings.position_ids"] = torch.arange(max_positions).expand((1, -1)).clone()
    return state


def relative_position_index(window: int) -> torch.Tensor:
    """Swin's (w*w, w*w) lookup into the relative-position table (Liu et al. 2021)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


def swin_4x_state(prefix: str, embed_dim: int, depths: list[int], heads: list[int], window: int, patch: int,
                  gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Swin as transformers 4.26 saved it: attention.self.*, intermediate/output.dense, index buffers."""
    c = embed_dim
    shapes = {"embeddings.patch_embeddings.projection.weight": (c, 3, patch, patch),
              "embeddings.patch_embeddings.projection.bias": (c,), "embeddings.norm.weight": (c,),
              "embeddings.norm.bias": (c,)}
    buffers = {}
    for i, depth in enumerate(depths):
        d = c * 2**i
        for j in range(depth):
            p = f"encoder.layers.{i}.blocks.{j}."
            shapes.update({f"{p}layernorm_before.weight": (d,), f"{p}layernorm_before.bias": (d,),
                           f"{p}attention.self.relative_position_bias_table": ((2 * window - 1) ** 2, heads[i])})
            for proj in ("query", "key", "value"):
                shapes[f"{p}attention.self.{proj}.weight"] = (d, d)
                shapes[f"{p}attention.self.{proj}.bias"] = (d,)
            shapes.update({f"{p}attention.output.dense.weight": (d, d), f"{p}attention.output.dense.bias": (d,),
                           f"{p}layernorm_after.weight": (d,), f"{p}layernorm_after.bias": (d,),
                           f"{p}intermediate.dense.weight": (4 * d, d), f"{p}intermediate.dense.bias": (4 * d,),
                           f"{p}output.dense.weight": (d, 4 * d), f"{p}output.dense.bias": (d,)})
            buffers[f"{p}attention.self.relative_position_index"] = relative_position_index(window)
        if i < len(depths) - 1:
            shapes.update({f"encoder.layers.{i}.downsample.reduction.weight": (2 * d, 4 * d),
                           f"encoder.layers.{i}.downsample.norm.weight": (4 * d,),
                           f"encoder.layers.{i}.downsample.norm.bias": (4 * d,)})
    last = c * 2 ** (len(depths) - 1)
    shapes.update({"layernorm.weight": (last,), "layernorm.bias": (last,)})
    return {prefix + k: v for k, v in {**_fill(shapes, gen), **buffers}.items()}


def resnet50_state(prefix: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """torchvision's resnet50 with fc deleted (CXR-CLIP's ResNet50 module), random weights and BN statistics."""
    import torchvision

    state = torchvision.models.resnet50().state_dict()
    out = {}
    for name, t in state.items():
        if name.startswith("fc."):
            continue
        if name.endswith("num_batches_tracked"):
            out[prefix + name] = torch.tensor(1234)
        elif name.endswith("running_var"):
            out[prefix + name] = 0.5 + torch.rand(t.shape, generator=gen)
        elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
            out[prefix + name] = 0.5 + 0.5 * torch.rand(t.shape, generator=gen)
        else:
            scale = math.sqrt(2.0 / max(1, t[0].numel())) if t.ndim == 4 else 0.1
            out[prefix + name] = scale * torch.randn(t.shape, generator=gen)
    return out


def heads_state(image_dim: int, text_dim: int, embed_dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"image_projection.projection.weight": 0.05 * torch.randn(embed_dim, image_dim, generator=gen),
            "image_projection.projection.bias": 0.05 * torch.randn(embed_dim, generator=gen),
            "text_projection.projection.weight": 0.05 * torch.randn(embed_dim, text_dim, generator=gen),
            "text_projection.projection.bias": 0.05 * torch.randn(embed_dim, generator=gen),
            "logit_scale": torch.tensor(math.log(1 / 0.07) + 0.3)}


TINY_SWIN = {"embed_dim": 24, "depths": [2, 2], "heads": [2, 4], "window": 4, "patch": 4}
TINY_SWIN_IMAGE_SIZE = 32  # 8x8 patches: stage 1 has 4 windows (shifted blocks masked), stage 2 one 4x4 window


def tiny_swin_cxr_clip_state(text_dir: Path, seed: int = 6, embed_dim: int = 16) -> dict[str, torch.Tensor]:
    """A complete swint_*-layout state dict: tiny Swin + the BERT of ``text_dir`` (random weights) + heads."""
    from transformers import BertConfig

    gen = torch.Generator().manual_seed(seed)
    cfg = BertConfig.from_pretrained(text_dir)
    text = bert_4x_state("text_encoder.text_encoder.", cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers,
                         cfg.intermediate_size, cfg.max_position_embeddings, gen)
    s = TINY_SWIN
    image = swin_4x_state("image_encoder.image_encoder.", s["embed_dim"], s["depths"], s["heads"], s["window"],
                          s["patch"], gen)
    return {**image, **text, **heads_state(s["embed_dim"] * 2 ** (len(s["depths"]) - 1), cfg.hidden_size, embed_dim,
                                          gen)}


def save_cxr_clip(path: Path, state: dict[str, torch.Tensor], config: dict, epoch: int = 7,
                  legacy_format: bool = False) -> Path:
    """torch.save of {model, optimizer, scheduler, config, epoch, train_loss}, as CXR-CLIP's trainer does."""
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    optimizer = torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-4)
    params[0].grad, params[1].grad = torch.ones(3), torch.ones(2, 2)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    payload = {"model": dict(state), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "config": config, "epoch": epoch, "train_loss": 1.2345}
    with omegaconf_lookalike():
        torch.save(payload, path, _use_new_zipfile_serialization=not legacy_format)
    return path


# ------------------------------------------------------------------------- reference forwards


def _ln(x, sd, key, eps):
    return F.layer_norm(x, x.shape[-1:], sd[key + ".weight"], sd[key + ".bias"], eps)


def _linear(x, sd, key):
    return F.linear(x, sd[key + ".weight"], sd.get(key + ".bias"))


def bert_reference(sd, prefix: str, input_ids, attention_mask, heads: int, eps: float = 1e-12) -> torch.Tensor:
    """BERT's last_hidden_state, written from the paper/4.x module names (post-LN, erf GELU)."""
    p = prefix
    n, length = input_ids.shape
    x = (sd[p + "embeddings.word_embeddings.weight"][input_ids]
         + sd[p + "embeddings.position_embeddings.weight"][torch.arange(length)][None]
         + sd[p + "embeddings.token_type_embeddings.weight"][0])
    x = _ln(x, sd, p + "embeddings.LayerNorm", eps)
    bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    h = x.shape[-1]

    def split(t):
        return t.view(n, length, heads, h // heads).transpose(1, 2)

    layer = 0
    while f"{p}encoder.layer.{layer}.attention.self.query.weight" in sd:
        q_ = f"{p}encoder.layer.{layer}."
        q, k, v = (split(_linear(x, sd, q_ + f"attention.self.{w}")) for w in ("query", "key", "value"))
        att = (q @ k.transpose(-1, -2) / math.sqrt(h // heads) + bias).softmax(-1)
        ctx = (att @ v).transpose(1, 2).reshape(n, length, h)
        x = _ln(x + _linear(ctx, sd, q_ + "attention.output.dense"), sd, q_ + "attention.output.LayerNorm", eps)
        inner = F.gelu(_linear(x, sd, q_ + "intermediate.dense"))
        x = _ln(x + _linear(inner, sd, q_ + "output.dense"), sd, q_ + "output.LayerNorm", eps)
        layer += 1
    return x


def _windows(x, w):
    n, hh, ww, c = x.shape
    return x.view(n, hh // w, w, ww // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)


def _unwindows(x, w, n, hh, ww):
    c = x.shape[-1]
    return x.view(n, hh // w, ww // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(n, hh, ww, c)


def _shift_mask(hh, ww, w, shift):
    img = torch.zeros(1, hh, ww, 1)
    count = 0
    for hs in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
        for ws in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
            img[:, hs, ws, :] = count
            count += 1
    win = _windows(img, w).squeeze(-1)
    diff = win[:, None, :] - win[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def swin_reference(sd, prefix: str, pixels, window: int, eps: float = 1e-5) -> torch.Tensor:
    """Swin (Liu et al. 2021) over 4.x-named tensors; returns last_hidden_state (N, tokens, C) after the final LN."""
    p = prefix
    x = F.conv2d(pixels, sd[p + "embeddings.patch_embeddings.projection.weight"],
                 sd[p + "embeddings.patch_embeddings.projection.bias"],
                 stride=sd[p + "embeddings.patch_embeddings.projection.weight"].shape[-1])
    n, c, hh, ww = x.shape
    x = _ln(x.flatten(2).transpose(1, 2), sd, p + "embeddings.norm", eps)
    stage = 0
    while f"{p}encoder.layers.{stage}.blocks.0.layernorm_before.weight" in sd:
        block = 0
        while f"{p}encoder.layers.{stage}.blocks.{block}.layernorm_before.weight" in sd:
            b = f"{p}encoder.layers.{stage}.blocks.{block}."
            w = min(window, hh, ww)
            shift = 0 if block % 2 == 0 or min(hh, ww) <= window else window // 2
            table = sd[b + "attention.self.relative_position_bias_table"]
            index = sd[b + "attention.self.relative_position_index"]
            heads = table.shape[1]
            h = _ln(x, sd, b + "layernorm_before", eps).view(n, hh, ww, c)
            if shift:
                h = torch.roll(h, (-shift, -shift), (1, 2))
            win = _windows(h, w)
            split = lambda t: t.view(t.shape[0], w * w, heads, c // heads).transpose(1, 2)  # noqa: E731,B023
            q, k, v = (split(_linear(win, sd, b + f"attention.self.{name}")) for name in ("query", "key", "value"))
            att = q @ k.transpose(-1, -2) * (c // heads) ** -0.5
            att = att + table[index.reshape(-1)].view(w * w, w * w, heads).permute(2, 0, 1)[None]
            if shift:
                mask = _shift_mask(hh, ww, w, shift)
                att = (att.view(n, mask.shape[0], heads, w * w, w * w) + mask[None, :, None]).view(-1, heads, w * w,
                                                                                                   w * w)
            out = (att.softmax(-1) @ v).transpose(1, 2).reshape(-1, w * w, c)
            out = _unwindows(_linear(out, sd, b + "attention.output.dense"), w, n, hh, ww)
            if shift:
                out = torch.roll(out, (shift, shift), (1, 2))
            x = x + out.reshape(n, hh * ww, c)
            inner = F.gelu(_linear(_ln(x, sd, b + "layernorm_after", eps), sd, b + "intermediate.dense"))
            x = x + _linear(inner, sd, b + "output.dense")
            block += 1
        down = f"{p}encoder.layers.{stage}.downsample."
        if down + "reduction.weight" in sd:
            g = x.view(n, hh, ww, c)
            g = torch.cat([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], -1)
            hh, ww, c = hh // 2, ww // 2, 2 * c
            x = F.linear(_ln(g.reshape(n, hh * ww, 2 * c), sd, down + "norm", eps), sd[down + "reduction.weight"])
        stage += 1
    return _ln(x, sd, p + "layernorm", eps)


def project(features, sd, key: str) -> torch.Tensor:
    return F.normalize(F.linear(features, sd[key + ".weight"], sd[key + ".bias"]), dim=-1)


# ------------------------------------------------------------------------- CheXzero (OpenAI CLIP)


def openai_clip_state(vocab: int, text_width: int, text_layers: int, context: int, vision_width: int,
                      vision_layers: int, patch: int, grid: int, embed_dim: int, gen: torch.Generator,
                      fp16: bool = False) -> dict[str, torch.Tensor]:
    """OpenAI CLIP ViT as ``model.state_dict()`` names it (CheXzero saves exactly that).

    With ``fp16`` the tensors that OpenAI's convert_weights halves (Linear/Conv/attention weights,
    the two projections) are float16, as in a checkpoint trained on a GPU after clip.load.
    """
    shapes: dict[str, tuple[int, ...]] = {"positional_embedding": (context, text_width),
                                          "text_projection": (text_width, embed_dim), "logit_scale": (),
                                          "token_embedding.weight": (vocab, text_width),
                                          "ln_final.weight": (text_width,), "ln_final.bias": (text_width,),
                                          "visual.class_embedding": (vision_width,),
                                          "visual.positional_embedding": (grid * grid + 1, vision_width),
                                          "visual.proj": (vision_width, embed_dim),
                                          "visual.conv1.weight": (vision_width, 3, patch, patch),
                                          "visual.ln_pre.weight": (vision_width,),
                                          "visual.ln_pre.bias": (vision_width,),
                                          "visual.ln_post.weight": (vision_width,),
                                          "visual.ln_post.bias": (vision_width,)}
    for prefix, width, layers in (("transformer", text_width, text_layers),
                                  ("visual.transformer", vision_width, vision_layers)):
        for i in range(layers):
            p = f"{prefix}.resblocks.{i}."
            shapes.update({p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
                           p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                           p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
                           p + "mlp.c_fc.weight": (4 * width, width), p + "mlp.c_fc.bias": (4 * width,),
                           p + "mlp.c_proj.weight": (width, 4 * width), p + "mlp.c_proj.bias": (width,),
                           p + "ln_2.weight": (width,), p + "ln_2.bias": (width,)})
    state = _fill(shapes, gen)
    state["logit_scale"] = torch.tensor(4.2)
    if fp16:
        halved = ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj", "conv1.weight", "text_projection",
                  "visual.proj")
        state = {k: v.half() if any(h in k for h in halved) else v for k, v in state.items()}
    return state


def _resblock(sd, p, x, mask):
    n, length, width = x.shape
    heads = width // 64  # OpenAI's rule
    h = _ln(x, sd, p + "ln_1", 1e-5)
    q, k, v = F.linear(h, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (t.view(n, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    att = q @ k.transpose(-1, -2) / math.sqrt(width // heads)
    if mask is not None:
        att = att + mask
    out = (att.softmax(-1) @ v).transpose(1, 2).reshape(n, length, width)
    x = x + _linear(out, sd, p + "attn.out_proj")
    h = _linear(_ln(x, sd, p + "ln_2", 1e-5), sd, p + "mlp.c_fc")
    return x + _linear(h * torch.sigmoid(1.702 * h), sd, p + "mlp.c_proj")  # QuickGELU


def _transformer(sd, prefix, x, mask=None):
    i = 0
    while f"{prefix}.resblocks.{i}.ln_1.weight" in sd:
        x = _resblock(sd, f"{prefix}.resblocks.{i}.", x, mask)
        i += 1
    return x


def openai_clip_image_reference(sd, pixels) -> torch.Tensor:
    """OpenAI CLIP's VisualTransformer.forward over the checkpoint tensors (projected, not normalised)."""
    sd = {k: v.float() for k, v in sd.items()}
    conv = sd["visual.conv1.weight"]
    x = F.conv2d(pixels, conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1)
    x = x + sd["visual.positional_embedding"]
    x = _transformer(sd, "visual.transformer", _ln(x, sd, "visual.ln_pre", 1e-5))
    return _ln(x[:, 0], sd, "visual.ln_post", 1e-5) @ sd["visual.proj"]


def openai_clip_text_reference(sd, tokens) -> torch.Tensor:
    """OpenAI CLIP's encode_text: ``tokens`` as clip.tokenize gives them (zero-padded to the context length)."""
    sd = {k: v.float() for k, v in sd.items()}
    context = sd["positional_embedding"].shape[0]
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    mask = torch.full((context, context), float("-inf")).triu(1)
    x = _ln(_transformer(sd, "transformer", x, mask), sd, "ln_final", 1e-5)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ sd["text_projection"]


# Merges that build "effusion</w>", "pleural</w>", "cardiomegaly</w>" and "no</w>" (word-final tokens end in </w>).
TINY_MERGES = ["e f", "ef f", "u s", "i o", "io n</w>", "us ion</w>", "eff usion</w>", "p l", "pl e", "ple u", "r a",
               "ra l</w>", "pleu ral</w>", "c a", "r d", "ca rd", "io m", "card iom", "e g", "a l", "al y</w>",
               "eg aly</w>", "cardiom egaly</w>", "n o</w>"]


def tiny_bpe_file(path: Path) -> Path:
    """A bpe_simple_vocab-format file (header line + merges; no trailing newline, which OpenAI's reader
    would take for an empty merge): a 538-token CLIP BPE."""
    import gzip

    path.write_bytes(gzip.compress(("#version: tiny\n" + "\n".join(TINY_MERGES)).encode()))
    return path
