"""Tiny, randomly initialised native dual encoders saved in their libraries' own layouts.

Real transformers / open_clip classes with small configs (hidden 32, 2 layers, 32 px images) and
MiniLM's real WordPiece tokenizer, so the hub-model code paths run offline and fast. Each builder
returns the directory; the native objects are rebuilt from it by the tests, as a user would.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

IMAGE = 32
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def _tokenizer():
    from transformers import AutoTokenizer

    from cxrtool.model.sources import minilm_dir

    return AutoTokenizer.from_pretrained(minilm_dir())


def _towers(tok, max_positions: int) -> tuple[dict, dict]:
    text = dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=max_positions)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE,
                  patch_size=8)
    return text, vision


def build_hf_clip(directory: Path, seed: int = 0) -> Path:
    """A CLIPModel directory as `save_pretrained` writes it (HF CLIP processor: short side + crop)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    tok = _tokenizer()
    text, vision = _towers(tok, 40)
    # CLIP pools the text at its end-of-text token: [SEP] for this WordPiece vocabulary.
    text.update(eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}).save_pretrained(
        directory)
    tok.save_pretrained(directory)
    return directory


def build_hf_siglip(directory: Path, seed: int = 0) -> Path:
    """A SiglipModel directory (SigLIP processor: squash to a square, bicubic, mean = std = 0.5)."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(seed)
    tok = _tokenizer()
    text, vision = _towers(tok, 16)
    text.update(eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    with torch.no_grad():  # SigLIP's published values are of this order (t = 10, b = -10 at init)
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-2.5)
    model.save_pretrained(directory)
    SiglipImageProcessor(size={"height": IMAGE, "width": IMAGE}).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def build_open_clip(directory: Path, text_dir: Path, seed: int = 0) -> Path:
    """BiomedCLIP's layout: open_clip_config.json + open_clip_pytorch_model.bin + tokenizer files,
    a ViT image tower and a Hugging Face BERT text tower (``text_dir``, a saved tiny BERT)."""
    from open_clip.model import CustomTextCLIP

    torch.manual_seed(seed)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": IMAGE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8,
                       "mlp_ratio": 2.0},
        "text_cfg": {"hf_model_name": str(text_dir), "hf_tokenizer_name": str(text_dir), "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 24},
    }
    build_cfg = json.loads(json.dumps(model_cfg))
    build_cfg["text_cfg"]["hf_model_pretrained"] = False
    model = CustomTextCLIP(**build_cfg)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}, indent=2))
    torch.save(model.state_dict(), directory / "open_clip_pytorch_model.bin")
    _tokenizer().save_pretrained(directory)
    return directory
