"""Training step overhead: (full train step) ÷ (bare forward + backward of the same model and batch).

Usage: python benchmarks/train_step_overhead.py [SHARED_DATA] [--batch-size 32] [--steps 6] [--workers 0]
                                                [--device cpu|cuda] [--accum-steps 1] [--set KEY=VALUE] [--json]
       (--csv LABELS.csv --image-root DIR: another labelled image table instead of the NIH one)

Defaults to the CPU recipe of the default model (ImageNet EfficientNet-Lite0 + frozen MiniLM).

The full step is what ``cxrtool train`` does per step: take the next batch from the DataLoader
(two augmented views and two texts per study, from the decoded-image cache), tokenize, forward
both towers, CXR-CLIP loss, backward, clip, AdamW, schedule. The bare step runs the same towers on
the same (already prepared) batch: forward, the same loss, backward, nothing else. Steps are
interleaved (bare, full, bare, full ...) so machine noise hits both alike; medians are reported.
Target on a 2-core CPU: ≤ 1.15.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cxrtool.data.prompts import PromptBank
from cxrtool.data.sources.csv_table import read_csv_studies
from cxrtool.train import resolve_config
from cxrtool.train.data import EpochBatches, StudyDataset, collate
from cxrtool.train.loop import Stepper, Towers, apply_freezing, build_model, param_groups, set_train_mode

REPO = Path(__file__).resolve().parents[1]
LABELS = ["atelectasis", "cardiomegaly", "effusion", "pneumothorax", "edema", "pneumonia", "no_finding"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shared", nargs="?", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--accum-steps", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides KEY=VALUE")
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("--image-root", type=Path, default=None)
    ap.add_argument("--model", default=None, help="init_from: a model directory (default: the pretrained towers)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from cxrtool.train.config import parse_overrides

    overrides = {"batch_size": args.batch_size, "workers": args.workers, "device": args.device,
                 "accum_steps": args.accum_steps, "freeze_text": True}
    if args.model:
        overrides["init_from"] = args.model
    cfg = resolve_config(overrides={**overrides, **parse_overrides(args.set)})
    device = torch.device(args.device)
    table = args.csv or args.shared / "nih_512" / "labels.csv"
    studies = read_csv_studies(table, patient_col="patient_id", view_col="view", label_cols=LABELS, source="bench",
                               validate_fraction=0.0, image_root=args.image_root)
    studies = studies[: args.batch_size * (args.steps + 3)]
    model = build_model(cfg).to(device)
    apply_freezing(model, cfg)
    set_train_mode(model)
    data = StudyDataset(studies, model.card.image, PromptBank.load(), cfg.seed, True, cfg.max_negatives,
                        True, cfg.hflip_prob, cfg.side_negatives, cfg.clahe_p, tuple(cfg.crop_scale), progress=False)
    sampler = EpochBatches(len(data), cfg.batch_size, cfg.seed)
    loader = iter(DataLoader(data, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate,
                             generator=torch.Generator().manual_seed(0)))
    opt = torch.optim.AdamW(param_groups(model, cfg))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    stepper = Stepper(model, Towers(model), cfg, device, opt, sched, torch.amp.GradScaler(device.type, enabled=False))
    fixed = next(loader)  # the bare step's batch, prepared once

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def bare() -> float:
        sync()
        t = time.perf_counter()
        f = stepper.features(fixed, stepper.towers)
        stepper.loss(f, fixed.keys, fixed.extra_keys).total.backward()
        sync()
        took = time.perf_counter() - t
        opt.zero_grad(set_to_none=True)
        return took

    def full() -> float:
        sync()
        t = time.perf_counter()
        batch = next(loader)
        stepper.step(batch)
        sync()
        return time.perf_counter() - t

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as cxrtool train does on CUDA
    for _ in range(2):  # warm-up (allocator, kernel selection, first-touch)
        bare(), full()
    bares, fulls = [], []
    for _ in range(args.steps - 1):
        bares.append(bare())
        fulls.append(full())
    b, f = statistics.median(bares), statistics.median(fulls)
    result = {"device": args.device, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "workers": args.workers, "accum_steps": args.accum_steps, "image_model": cfg.image_model,
              "freeze_text": cfg.freeze_text, "amp": str(stepper.amp),
              "bare_fwd_bwd_s": round(b, 3), "full_step_s": round(f, 3), "overhead": round(f / b, 3),
              "samples_per_s": round(args.batch_size / f, 2)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"bare forward+backward  {b:7.3f} s/step   (median of {len(bares)})")
    print(f"full train step        {f:7.3f} s/step   ({result['samples_per_s']} studies/s)")
    print(f"step overhead          {f / b:7.3f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
