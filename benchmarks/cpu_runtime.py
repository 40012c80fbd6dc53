"""CPU image encoding: torch eager vs ONNX Runtime, model-only and the whole embed pipeline, in one run.

Usage: python benchmarks/cpu_runtime.py ARCHIVE [ARCHIVE ...] [--model M] [--batch-sizes 1,2,4,8]
       [--repeat 3] [--threads N]

For each archive: the images are decoded and preprocessed once; then the image side (tower, mirror
pass of a flip_pair model, pooling, projection) runs on those tensors through torch and through
ONNX Runtime at each batch size (img/s, median of --repeat passes), and the max cosine gap between
the two engines' vectors is taken over every image. Then ``embed_archive`` runs the whole pipeline
(decode, model, shard writing) into a fresh workspace once per engine at the pipeline's default
batch size. Printed as JSON: rates, ratios onnx / torch, and where the pipeline's time goes.
Compare ratios, not absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrtool.embed import embed_archive
from cxrtool.embed.mapper import ImageDecoder
from cxrtool.embed.pipeline import ONNX_CPU_BATCH, default_batch_size
from cxrtool.io import discover_archive
from cxrtool.io.classify import HeaderFilter
from cxrtool.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("archives", type=Path, nargs="+")
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch-sizes", default="1,2,4,8")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime intra-op threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    torch_model, onnx_model = load_model(args.model), load_model(args.model)
    torch_model.use_runtime("torch")
    onnx_model.use_runtime("onnx")
    report = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "archives": {}}
    for archive in args.archives:
        report["archives"][str(archive)] = measure(archive, torch_model, onnx_model, sizes, args.repeat)
    print(json.dumps(report, indent=2))


def _rate(model, tensors: list[torch.Tensor], batch: int, repeat: int) -> tuple[float, np.ndarray]:
    model.encode_pixels(torch.stack(tensors[:batch]))  # warm-up (and, for ONNX, the first-batch check)
    rates, vectors = [], None
    for _ in range(repeat):
        out, t = [], time.perf_counter()
        for i in range(0, len(tensors), batch):
            out.append(model.encode_pixels(torch.stack(tensors[i : i + batch])))
        rates.append(len(tensors) / (time.perf_counter() - t))
        vectors = np.concatenate(out)
    return statistics.median(rates), vectors


def measure(archive: Path, torch_model, onnx_model, sizes: list[int], repeat: int) -> dict:
    decode = ImageDecoder(torch_model.card.image, HeaderFilter())
    tensors = []
    for f in discover_archive(archive):
        if not f.problem:
            x, _, err = decode(f)
            if err is None:
                tensors.append(x)
    model_only = {}
    gap = 0.0
    for b in sizes:
        t_rate, t_vec = _rate(torch_model, tensors, b, repeat)
        o_rate, o_vec = _rate(onnx_model, tensors, b, repeat)
        cos = (t_vec * o_vec).sum(1) / np.linalg.norm(t_vec, axis=1) / np.linalg.norm(o_vec, axis=1)
        gap = max(gap, float(1 - cos.min()))
        model_only[b] = {"torch_img_per_s": round(t_rate, 1), "onnx_img_per_s": round(o_rate, 1),
                         "onnx_over_torch": round(o_rate / t_rate, 2)}
    pipeline = {}
    for name, runtime in (("torch", "torch"), ("onnx", "onnx")):
        rates, last = [], None
        for _ in range(max(1, repeat - 1)):
            with tempfile.TemporaryDirectory() as ws:
                last = embed_archive(archive, ws, torch_model, runtime=runtime, progress=False)
                rates.append(last.embedded / last.seconds)
        batch = ONNX_CPU_BATCH if runtime == "onnx" else default_batch_size("cpu", torch_model)  # embed's default
        pipeline[name] = {"img_per_s": round(statistics.median(rates), 1), "batch_size": batch,
                          "runtime": last.image_runtime,
                          "time_split_s": {"wait_for_decode": round(last.wait_seconds, 2),
                                           "model": round(last.model_seconds, 2),
                                           "write": round(last.write_seconds, 2),
                                           "total": round(last.seconds, 2)}}
    torch_model.use_runtime("torch")
    return {"images": len(tensors), "model_only_by_batch": model_only, "max_cosine_gap": float(f"{gap:.2e}"),
            "pipeline": pipeline,
            "pipeline_onnx_over_torch": round(pipeline["onnx"]["img_per_s"] / pipeline["torch"]["img_per_s"], 2)}


if __name__ == "__main__":
    main()
