"""GPU paths, checked and timed in one run: AMP + channels_last inference, AMP training, throughput.

Usage: python benchmarks/gpu_check.py TOKENIZER_DIR OUT_DIR [--speed-only]

Needs a CUDA device. Builds a model of the default model's architecture (EfficientNet-Lite0 +
a MiniLM-L6-shaped BERT, 512-d) with random weights — the pretrained weights are not needed to
check numerics and speed — then:

1. inference: the same images through ``encode_pixels`` on CPU (fp32) and on CUDA (fp16 autocast,
   channels_last); reports the worst cosine between the two;
2. training: ``cxrtool train`` on the sample archive with bf16 and with fp16 (GradScaler), checks
   every logged loss is finite and the saved model loads;
3. throughput: images/s of ``encode_pixels`` at the pipeline's GPU batch size, and the training
   step overhead benchmark on CUDA.
Writes ``gpu_check.json`` into OUT_DIR and prints it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"


def main() -> None:
    tok_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer, BertConfig, BertModel

    from cxrtool.data.manifest import write_manifest
    from cxrtool.data.sources.csv_table import read_csv_studies
    from cxrtool.model import create_model, load_model, save_model_dir

    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    text_dir = out / "minilm_shaped"
    tok = AutoTokenizer.from_pretrained(tok_dir)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, max_position_embeddings=512)).save_pretrained(text_dir)
    tok.save_pretrained(text_dir)
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", str(text_dir), image_weights=None, embed_dim=512)
    model_dir = save_model_dir(model, out / "model")

    speed_only = "--speed-only" in sys.argv
    # 1. AMP + channels_last inference equals fp32 CPU inference
    model = load_model(str(model_dir))
    paths = sorted(p for p in (SAMPLE / "archive" / "nih").rglob("*.jpg"))[:64]
    pixels = torch.stack([model.preprocess(p) for p in paths])
    cpu = model.encode_pixels(pixels)
    gpu_model = load_model(str(model_dir), device="cuda")
    gpu = gpu_model.encode_pixels(pixels)
    report["inference_min_cosine_fp16_vs_fp32"] = round(float(np.min(np.sum(cpu * gpu, axis=1))), 5)
    texts = ["left pleural effusion", "cardiomegaly", "the lungs are clear."]
    report["text_max_abs_diff_gpu_vs_cpu"] = float(np.abs(model.encode_texts(texts)
                                                          - gpu_model.encode_texts(texts)).max())

    # 3a. inference throughput at the pipeline's GPU batch size
    from cxrtool.embed.pipeline import default_batch_size

    bs = default_batch_size("cuda")
    batch = pixels.repeat((bs + len(pixels) - 1) // len(pixels), 1, 1, 1)[:bs]
    for _ in range(3):
        gpu_model.encode_pixels(batch)
    torch.cuda.synchronize()
    t = time.perf_counter()
    reps = 20
    for _ in range(reps):
        gpu_model.encode_pixels(batch)
    torch.cuda.synchronize()
    report["encode_pixels_images_per_s"] = round(reps * bs / (time.perf_counter() - t), 1)
    report["encode_batch_size"] = bs

    # 2. AMP training (bf16, fp16 with GradScaler), channels_last, on the sample archive
    studies = read_csv_studies(SAMPLE / "labels.csv", patient_col="patient_id", view_col="view",
                               label_cols=["atelectasis", "cardiomegaly", "effusion", "pneumothorax", "no_finding"],
                               image_root=SAMPLE / "archive", validate_fraction=0.15)
    manifest = write_manifest(studies, out / "m.parquet")
    for amp in () if speed_only else ("bf16", "fp16"):
        cmd = [sys.executable, "-m", "cxrtool.cli", "train", str(manifest), "-o", str(out / f"trained_{amp}"),
               "--device", "cuda", "--json", "--set", f"init_from={model_dir}", "--set", "epochs=2",
               "--set", "batch_size=32", "--set", f"amp={amp}", "--set", "workers=4", "--set", "log_every=1"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        took = time.perf_counter() - t
        if proc.returncode:
            report[f"train_{amp}"] = {"error": proc.stderr[-2000:]}
            continue
        rows = [json.loads(line) for line in (out / f"trained_{amp}.run" / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if r["kind"] == "step"]
        trained = load_model(str(out / f"trained_{amp}"), device="cuda")
        report[f"train_{amp}"] = {
            "steps": len(steps), "all_losses_finite": all(math.isfinite(r["loss"]) for r in steps),
            "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"],
            "samples_per_s_median": float(np.median([r["samples_per_s"] for r in steps[1:]] or [0])),
            "val": {k: v for k, v in json.loads(proc.stdout)["history"][-1].items() if k.startswith("val_t")},
            "loads": trained.encode_texts(["x"]).shape[1] == 512, "wall_s": round(took, 1)}

    # 3b. training step overhead on CUDA (bare forward+backward vs the whole step)
    for extra in ([], ["--set", "freeze_text=false"]):
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_step_overhead.py"), "--csv",
                               str(SAMPLE / "labels.csv"), "--image-root", str(SAMPLE / "archive"), "--device", "cuda",
                               "--batch-size", "16", "--steps", "6", "--workers", "4", "--model", str(model_dir),
                               "--json", *extra], capture_output=True, text=True)
        key = "step_overhead_frozen_text" if not extra else "step_overhead_full"
        report[key] = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-2000:]}
    # 3c. the whole embed pipeline on the sample archive (decode workers + GPU), ratio to model-only
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "embed_throughput.py"), str(SAMPLE / "archive"),
                           "--device", "cuda", "--model", str(model_dir), "--repeat", "2"], capture_output=True,
                          text=True)
    report["embed_throughput_stdout"] = proc.stdout[-3000:] if proc.returncode == 0 else proc.stderr[-2000:]
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
