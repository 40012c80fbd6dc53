"""Importers at the released checkpoints' real sizes: time, memory, and agreement with reference forwards.

Usage (from the repository root): python -m benchmarks.import_real_shapes [--only r50,swint,chexzero] [--keep DIR]

No released weights are needed (nor may they be bundled): each checkpoint is synthetic, random, in
the released layout at full size. CXR-CLIP: torchvision ResNet-50 or Swin-T (depths 2-2-6-2, window
7, 224 px) + a Bio_ClinicalBERT-shaped BERT-base (vocab 28,996, 12 layers, 768), with OmegaConf-style
config, AdamW and scheduler state; CheXzero: OpenAI CLIP ViT-B/32 (vocab 49,408) with the float16
weights of a GPU-trained file. The BERT tokenizer is a placeholder vocabulary of 28,996 WordPiece
entries (MiniLM's first lines): it tokenizes, it is not Bio_ClinicalBERT's. CheXzero's tokenizer is
the real OpenAI BPE (open_clip's copy).

Each format runs in its own process so peak RSS is its own. Reported: checkpoint size, import
seconds (read, place, write, strict reload), peak RSS, and the largest absolute difference between
the imported model's embeddings and the hand-written reference forward (tests/checkpoint_layouts.py)
on 4 sample images and 4 texts.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
IMAGES = sorted((REPO / "sample_data" / "archive" / "nih").rglob("*.jpg"))[:4]
TEXTS = ["pleural effusion", "no acute cardiopulmonary process.", "mild cardiomegaly with pulmonary edema",
         "the lungs are clear."]


def _bert_dir(root: Path) -> Path:
    """config.json of Bio_ClinicalBERT's shape + a 28,996-entry vocab.txt (placeholder words)."""
    from transformers import BertConfig

    from cxrtool.model.sources import minilm_dir

    d = root / "bio_clinicalbert_shaped"
    d.mkdir()
    vocab = (minilm_dir() / "vocab.txt").read_text().splitlines()[:28996]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertConfig(vocab_size=28996).save_pretrained(d)  # BERT-base: 12 layers, 768, 12 heads, 512 positions
    return d


def _cxr_clip(kind: str, root: Path) -> dict:
    import numpy as np

    from cxrtool.model import load_model_dir
    from cxrtool.model.imports import import_cxr_clip
    from cxrtool.model.imports.cxr_clip import RESNET_PREFIX, SWIN_PREFIX, TEXT_PREFIX
    from tests.checkpoint_layouts import (
        bert_4x_state,
        bert_reference,
        cxr_clip_config,
        heads_state,
        project,
        resnet50_state,
        save_cxr_clip,
        swin_4x_state,
        swin_reference,
    )

    gen = torch.Generator().manual_seed(0)
    text_dir = _bert_dir(root)
    state = bert_4x_state(TEXT_PREFIX, 28996, 768, 12, 3072, 512, gen)
    if kind == "r50":
        state.update(resnet50_state(RESNET_PREFIX, gen))
        state.update(heads_state(2048, 768, 512, gen))
    else:
        state.update(swin_4x_state(SWIN_PREFIX, 96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 4, gen))
        state.update(heads_state(768, 768, 512, gen))
    ckpt = save_cxr_clip(root / f"{kind}_mcc.tar", state, cxr_clip_config("resnet" if kind == "r50" else "swin", 224,
                                                                          256))
    t0 = time.perf_counter()
    report = import_cxr_clip(ckpt, root / "model", text_encoder=str(text_dir))
    seconds = time.perf_counter() - t0
    model = load_model_dir(root / "model")
    pixels = torch.stack([model.preprocess(p) for p in IMAGES])
    with torch.no_grad():
        if kind == "r50":
            import torchvision

            ref = torchvision.models.resnet50()
            ref.fc = torch.nn.Identity()
            ref.load_state_dict({k[len(RESNET_PREFIX):]: v for k, v in state.items() if k.startswith(RESNET_PREFIX)})
            feats = ref.eval()(pixels)
        else:
            feats = swin_reference(state, SWIN_PREFIX, pixels, 7)[:, 0]
        image_ref = project(feats, state, "image_projection.projection").numpy()
        enc = model.tokenize(TEXTS)
        hidden = bert_reference(state, TEXT_PREFIX, enc["input_ids"], enc["attention_mask"], heads=12)
        eos = enc["attention_mask"].sum(1) - 1
        text_ref = project(hidden[torch.arange(len(TEXTS)), eos], state, "text_projection.projection").numpy()
    return {"checkpoint_mb": round(ckpt.stat().st_size / 2**20, 1), "import_s": round(seconds, 1),
            "tensors": report.tensors, "dropped": len(report.dropped),
            "max_abs_diff_image": float(np.abs(model.encode_pixels(pixels) - image_ref).max()),
            "max_abs_diff_text": float(np.abs(model.encode_texts(TEXTS) - text_ref).max())}


def _chexzero(root: Path) -> dict:
    import numpy as np

    from cxrtool.model import load_model_dir
    from cxrtool.model.imports import import_chexzero
    from tests.checkpoint_layouts import openai_clip_image_reference, openai_clip_state, openai_clip_text_reference

    state = openai_clip_state(vocab=49408, text_width=512, text_layers=12, context=77, vision_width=768,
                              vision_layers=12, patch=32, grid=7, embed_dim=512, gen=torch.Generator().manual_seed(0),
                              fp16=True)
    ckpt = root / "best_64_5e-05_original_22000_0.864.pt"
    torch.save(state, ckpt)
    t0 = time.perf_counter()
    report = import_chexzero(ckpt, root / "model")
    seconds = time.perf_counter() - t0
    model = load_model_dir(root / "model")
    pixels = torch.stack([model.preprocess(p) for p in IMAGES])
    enc = model.tokenize(TEXTS)
    tokens = torch.zeros(len(TEXTS), 77, dtype=torch.long)
    for i, (ids, mask) in enumerate(zip(enc["input_ids"], enc["attention_mask"], strict=True)):
        tokens[i, : int(mask.sum())] = ids[mask.bool()]
    with torch.no_grad():
        image_ref = torch.nn.functional.normalize(openai_clip_image_reference(state, pixels), dim=-1).numpy()
        text_ref = torch.nn.functional.normalize(openai_clip_text_reference(state, tokens), dim=-1).numpy()
    return {"checkpoint_mb": round(ckpt.stat().st_size / 2**20, 1), "import_s": round(seconds, 1),
            "tensors": report.tensors, "dropped": len(report.dropped),
            "max_abs_diff_image": float(np.abs(model.encode_pixels(pixels) - image_ref).max()),
            "max_abs_diff_text": float(np.abs(model.encode_texts(TEXTS) - text_ref).max())}


def _one(kind: str, keep: Path | None) -> None:
    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix=f"import-{kind}-", dir=keep))
    try:
        row = _chexzero(root) if kind == "chexzero" else _cxr_clip(kind, root)
        row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(json.dumps({"format": kind, **row}))
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="r50,swint,chexzero")
    ap.add_argument("--keep", type=Path, help="Keep the checkpoints and models under this folder.")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _one(args.child, args.keep)
        return
    for kind in args.only.split(","):
        cmd = [sys.executable, "-m", "benchmarks.import_real_shapes", "--child", kind]
        if args.keep:
            cmd += ["--keep", str(args.keep)]
        subprocess.run(cmd, check=True, cwd=REPO)


if __name__ == "__main__":
    main()
