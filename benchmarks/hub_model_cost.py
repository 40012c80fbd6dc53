"""Memory and CPU speed to expect from the public medical models cxrtool loads by hub name.

Usage: python benchmarks/hub_model_cost.py [--only NAME ...] [--batch 4] [--rounds 3] [--threads N]

The hubs are out of reach here, so each architecture is built with random weights from the
published configuration (the same transformers / open_clip classes, so the same arithmetic as
the real checkpoint). Parameter counts come from a meta-device build (no memory); image speed
is `DualEncoder.encode_pixels` on preprocessed batches (what `cxrtool embed` spends in the model
per image), the median of --rounds after one warm-up batch. Decoding is not included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

# Published architectures (vision tower geometry decides image speed). MedSigLIP's patch size is
# not on its public card; SigLIP-400M's 14 px is assumed (1,024 tokens at 448 px).
ARCHS = {
    "medsiglip-448 (SigLIP-400M, 448 px)": ("siglip", dict(hidden_size=1152, intermediate_size=4304,
                                                          num_hidden_layers=27, num_attention_heads=16,
                                                          image_size=448, patch_size=14),
                                            dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                                 num_attention_heads=16, vocab_size=32000,
                                                 max_position_embeddings=64)),
    "XraySigLIP/XrayCLIP vit-b-16-siglip-512": ("siglip", dict(hidden_size=768, intermediate_size=3072,
                                                              num_hidden_layers=12, num_attention_heads=12,
                                                              image_size=512, patch_size=16),
                                                dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                     num_attention_heads=12, vocab_size=32000,
                                                     max_position_embeddings=64)),
    "XrayCLIP/XraySigLIP vit-b-16 laion2b, BiomedCLIP image tower (ViT-B/16, 224 px)": (
        "clip", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     image_size=224, patch_size=16),
        dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)),
    "XrayCLIP/XraySigLIP vit-l-14 laion2b (ViT-L/14, 224 px)": (
        "clip", dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=224, patch_size=14),
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)),
}


def build(kind: str, vision: dict, text: dict, device: str = "cpu"):
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    if kind == "siglip":
        cfg, cls = SiglipConfig(vision_config=vision, text_config=text), SiglipModel
    else:
        cfg, cls = CLIPConfig(vision_config=vision, text_config=text, projection_dim=text["hidden_size"]), CLIPModel
    with torch.device(device):
        return cls(cfg)


def measure(name: str, batch: int, rounds: int) -> dict:
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    from cxrtool.model.families.hf import wrap_hf_model
    from cxrtool.model.sources import minilm_dir

    kind, vision, text = ARCHS[name]
    meta = build(kind, vision, text, "meta")
    params = sum(p.numel() for p in meta.parameters())
    vision_params = sum(p.numel() for p in meta.vision_model.parameters())
    native = build(kind, vision, text).eval()
    size = vision["image_size"]
    processor = (SiglipImageProcessor(size={"height": size, "width": size}) if kind == "siglip" else
                 CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}))
    from transformers import AutoTokenizer

    model = wrap_hf_model(native, processor, AutoTokenizer.from_pretrained(minilm_dir()), name)
    pixels = torch.randn(batch, 3, size, size)
    model.encode_pixels(pixels[:1])  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        model.encode_pixels(pixels)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {"model": name, "params_m": round(params / 1e6), "vision_params_m": round(vision_params / 1e6),
            "fp32_gb": round(params * 4 / 1e9, 2), "input": size, "batch": batch,
            "images_per_s": round(batch / sec, 2), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="substrings of the architectures to run")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ARCHS:
        if args.only and not any(s.lower() in name.lower() for s in args.only):
            continue
        print(json.dumps(measure(name, args.batch, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
