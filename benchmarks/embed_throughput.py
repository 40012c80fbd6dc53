"""Embedding throughput: decode alone, model alone, and the whole pipeline, in one run.

Usage: python benchmarks/embed_throughput.py ARCHIVE [--workers N] [--device cpu|cuda] [--repeat R]
       [--runtime auto|onnx|torch]

Prints images/s for each stage and the ratio pipeline ÷ model-only (1.0 = the model is the only
bottleneck; lower = decoding or I/O starves it). Uses the bundled default model unless --model.
Timings are medians over --repeat runs; compare ratios, not absolute numbers, across machines.
``--runtime`` (default auto, as `cxrtool embed`) is the CPU engine of the image side for every stage;
benchmarks/cpu_runtime.py compares torch and ONNX Runtime side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from cxrtool.embed import embed_archive
from cxrtool.embed.mapper import ImageDecoder
from cxrtool.embed.pipeline import default_batch_size, default_workers
from cxrtool.embed.shards import content_hash
from cxrtool.io import ArchiveFile, decode_image, discover_archive
from cxrtool.io.classify import HeaderFilter
from cxrtool.io.decode import DecodeError
from cxrtool.io.dicom_header import read_dicom_header
from cxrtool.model import load_model
from cxrtool.model.card import ImageSpec
from cxrtool.model.transform import preprocess


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("archive", type=Path)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the pipeline's default for the device")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--runtime", default="auto", choices=("auto", "onnx", "torch"))
    args = ap.parse_args()
    model = load_model(args.model, device=args.device)
    print(json.dumps(measure(args.archive, model, args.device, args.batch_size, args.workers, args.repeat,
                             args.runtime), indent=2))


def measure(archive: Path, model, device: str, batch_size: int | None = None, workers: int | None = None,
            repeat: int = 3, runtime: str = "auto") -> dict:
    """All stage rates for one archive, measured in this one call (see the module docstring)."""
    model.use_runtime(runtime if device == "cpu" else "torch")
    batch_size = batch_size or default_batch_size(device, model)
    files = [f for f in discover_archive(archive) if not f.problem]

    # 1. the decode side alone, in this one process: exactly what a pipeline worker does per
    #    file (read the bytes once, content hash, header check, decode at the resolution the model
    #    needs, preprocess), through the pipeline's own decoder; and the same at full size, for the
    #    reduced-decoding speed-up
    decode = ImageDecoder(model.card.image, HeaderFilter())
    for f in files:  # page cache: every stage below then reads warm files (else the first one pays the disk)
        f.path.read_bytes()
    per_kind: dict[str, list[float]] = defaultdict(list)
    per_kind_full: dict[str, list[float]] = defaultdict(list)
    tensors = []
    for i in range(0, len(files), max(1, len(files) // 20)):  # warm-up: codec plugins load on first use
        if decode(files[i])[2] is None:
            _full_size_item(files[i], model.card.image)
    # two separate passes: a full-size decode between reduced ones evicts the caches and made
    # the reduced rate (the bound) look worse than the pipeline achieved
    keys = {}
    for i, f in enumerate(files):
        t = time.perf_counter()
        x, rec, err = decode(f)
        reduced = time.perf_counter() - t
        if err is not None:
            continue
        keys[i] = f"{f.kind}:{rec['transfer_syntax'] or f.path.suffix.lower()}"
        per_kind[keys[i]].append(reduced)
        tensors.append(x)
    for i, key in keys.items():
        t = time.perf_counter()
        _full_size_item(files[i], model.card.image)
        per_kind_full[key].append(time.perf_counter() - t)
    decode_rate = len(tensors) / sum(sum(v) for v in per_kind.values())
    decode_rate_full = len(tensors) / sum(sum(v) for v in per_kind_full.values())

    # 2. model alone on already-preprocessed tensors
    batch = torch.stack(tensors[: batch_size])
    model.encode_pixels(batch)  # warm-up
    model_rates = []
    for _ in range(repeat):
        t = time.perf_counter()
        n = 0
        for i in range(0, len(tensors), batch_size):
            model.encode_pixels(torch.stack(tensors[i : i + batch_size]))
            n += len(tensors[i : i + batch_size])
        model_rates.append(n / (time.perf_counter() - t))
    model_rate = statistics.median(model_rates)

    # 3. the real pipeline (workers, batching, shard writing), fresh workspace each time
    pipe_rates, last = [], None
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as ws:
            last = embed_archive(archive, ws, model, batch_size=batch_size, workers=workers,
                                 device=device, progress=False, runtime=runtime)
            pipe_rates.append(last.embedded / last.seconds)
    pipe_rate = statistics.median(pipe_rates)

    # 4. the naive loop users write first: one file at a time, full-size decode, batch of 1
    t = time.perf_counter()
    n = 0
    for f in files:
        try:
            x = preprocess(decode_image(f.path).pixels, model.card.image)
        except DecodeError:
            continue
        model.encode_pixels(x[None])
        n += 1
    naive_rate = n / (time.perf_counter() - t)

    # 5. text query encoding latency
    model.encode_texts(["warm up"])
    t = time.perf_counter()
    for q in ["cardiomegaly", "left pleural effusion", "pneumothorax", "the lungs are clear"] * 5:
        model.encode_texts([q])
    query_ms = (time.perf_counter() - t) / 20 * 1000

    report = {
        "device": device, "torch_threads": torch.get_num_threads(), "images": len(tensors),
        "image_runtime": last.image_runtime,
        "workers": workers if workers is not None else default_workers(device),
        "batch_size": batch_size,
        "decode_only_img_per_s": round(decode_rate, 1),
        "decode_only_full_size_img_per_s": round(decode_rate_full, 1),
        "model_only_img_per_s": round(model_rate, 1),
        "pipeline_img_per_s": round(pipe_rate, 1),
        "pipeline_over_model_only": round(pipe_rate / model_rate, 3),
        # on a CPU decode and model share the cores: the combined bound is 1/(1/decode + 1/model)
        "cpu_bound_img_per_s": round(1 / (1 / decode_rate + 1 / model_rate), 1),
        "pipeline_over_cpu_bound": round(pipe_rate / (1 / (1 / decode_rate + 1 / model_rate)), 3),
        "naive_loop_img_per_s": round(naive_rate, 1),
        "pipeline_over_naive_loop": round(pipe_rate / naive_rate, 2),
        "pipeline_time_split_s": {"discover": round(last.discover_seconds, 2),
                                  "wait_for_decode": round(last.wait_seconds, 2),
                                  "model": round(last.model_seconds, 2), "write": round(last.write_seconds, 2)},
        "query_encode_ms": round(query_ms, 1),
        "decode_ms_by_kind": {k: {"reduced": round(statistics.median(v) * 1000, 1),
                                  "full": round(statistics.median(per_kind_full[k]) * 1000, 1)}
                              for k, v in sorted(per_kind.items())},
    }
    return report


def _full_size_item(f: ArchiveFile, spec: ImageSpec) -> torch.Tensor:
    """A worker's per-file steps (as in ``ImageDecoder``) with a full-size decode."""
    data = f.path.read_bytes()
    content_hash(data)
    if f.kind == "dicom":
        read_dicom_header(f.path, data=data)
    return preprocess(decode_image(f.path, data=data).pixels, spec)


if __name__ == "__main__":
    main()
