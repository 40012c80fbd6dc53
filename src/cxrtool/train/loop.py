"""The training loop: manifest in, model directory out; resumable step by step.

One process on a CPU or GPU, or one process per GPU under ``torchrun`` (negatives gathered across
processes). Each step: two views and two texts per study → CXR-CLIP's loss (CLIP + ICL + TCL,
optional false-negative removal and side-swapped hard negatives) → AdamW with warm-up + cosine.
Gradient accumulation keeps the contrastive batch whole: features of every micro-batch are first
computed without gradients, then each micro-batch is recomputed with gradients (same dropout
draws) against the cached features of the others, so the summed gradient is the full batch's.

The run folder (``<out>.run`` unless given) holds ``config.json``, ``metrics.jsonl`` and
``checkpoints/{last,best}.pt``; ``--resume`` continues a killed run exactly (model, optimizer,
scheduler, scaler, RNG states, the position inside the epoch). The best epoch (validation loss by
default, CXR-CLIP's rule) is written to ``<out>`` as a model directory that embed/search load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from cxrtool.data.manifest import read_manifest
from cxrtool.data.prompts import PromptBank
from cxrtool.errors import CxrError, ManifestError, ModelError
from cxrtool.model.dual import DualEncoder
from cxrtool.model.factory import load_model_dir, save_model_dir
from cxrtool.model.families.cxrtool import create_model
from cxrtool.train.checkpoint import BEST, LAST, atomic_save, load_checkpoint, restore_rng_states, rng_states
from cxrtool.train.config import TrainConfig, config_differences
from cxrtool.train.data import Batch, EpochBatches, StudyDataset, collate
from cxrtool.train.distributed import DistInfo, barrier, init_distributed, shutdown
from cxrtool.train.loss import LossTerms, cxr_clip_loss
from cxrtool.train.validation import selection_score, validate

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
CONFIG = "config.json"


@dataclass
class TrainResult:
    model_dir: Path
    run_dir: Path
    best_epoch: int
    history: list[dict]
    skipped_images: int
    steps: int
    main: bool = True  # False on the other processes of a torchrun job (they write nothing)


def default_run_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.run"


# ----------------------------------------------------------------------------------- the model
def build_model(cfg: TrainConfig) -> DualEncoder:
    if cfg.init_from:
        model = load_model_dir(cfg.init_from)
        if model.card.family != "cxrtool":
            raise ModelError(f"{cfg.init_from}: fine-tuning a {model.card.family} model is not supported",
                             "train starts from cxrtool-family models; hub models are used as they are (embed, "
                             "search, classify, evaluate)")
    else:
        model = create_model(cfg.image_model, cfg.text_model, cfg.image_weights, embed_dim=cfg.embed_dim,
                             input_size=cfg.input_size, pooling=cfg.pooling, max_length=cfg.max_length,
                             mean=cfg.mean, std=cfg.std, image_feature=cfg.image_feature)
    model.card.embedding = cfg.resolved_embedding()  # validation during training scores as the export will
    return model


_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|block|blocks)\.(\d+)\.")


def apply_freezing(model: DualEncoder, cfg: TrainConfig) -> dict[str, int]:
    """Freeze whole towers or their lower layers; returns trainable parameter counts per tower.

    A BERT-style pooler is never used (the card's pooling reads the hidden states), so it is frozen
    too: parameters without gradients would stall DDP's gradient reduction.
    """
    pooler = getattr(model.text_backbone, "pooler", None)
    if isinstance(pooler, nn.Module):
        pooler.requires_grad_(False)
    if cfg.freeze_text:
        model.text_backbone.requires_grad_(False)
    elif cfg.freeze_text_layers:
        for name, p in model.text_backbone.named_parameters():
            m = _LAYER_RE.search(name)
            if "embeddings" in name or (m and int(m.group(1)) < cfg.freeze_text_layers):
                p.requires_grad_(False)
    if cfg.freeze_image:
        model.image_backbone.requires_grad_(False)
    elif cfg.freeze_image_layers:
        from timm.models import group_parameters

        groups = group_parameters(model.image_backbone, model.image_backbone.group_matcher(coarse=True))
        frozen = {n for gid in sorted(groups)[: cfg.freeze_image_layers] for n in groups[gid]}
        for name, p in model.image_backbone.named_parameters():
            if name in frozen:
                p.requires_grad_(False)
    count = {}
    for tower in ("image_backbone", "text_backbone"):
        count[tower] = sum(p.numel() for p in getattr(model, tower).parameters() if p.requires_grad)
    return count


def set_train_mode(model: DualEncoder) -> None:
    """train(), except modules with nothing left to train (frozen norms keep their statistics)."""
    model.train()
    for module in model.modules():
        params = list(module.parameters(recurse=True))
        if params and not any(p.requires_grad for p in params):
            module.eval()


def param_groups(model: DualEncoder, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms and the temperature; own lr for the text tower."""
    text_lr = cfg.text_lr if cfg.text_lr is not None else cfg.lr / 10
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if (p.ndim < 2 or name == "logit_scale") else cfg.weight_decay
        lr = text_lr if name.startswith("text_backbone.") else cfg.lr
        groups.setdefault((lr, decay), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def warmup_cosine(total: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


class Towers(nn.Module):
    """Both towers in one ``forward`` (what DDP wraps): pixels + tokens -> unit features."""

    def __init__(self, model: DualEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.model.image_features(pixels), self.model.text_features(input_ids, attention_mask)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        return None
    return torch.float16 if cfg.amp == "fp16" else torch.bfloat16


# ------------------------------------------------------------------------------------ one step
@dataclass
class Features:
    i1: torch.Tensor
    i2: torch.Tensor
    t1: torch.Tensor
    t2: torch.Tensor
    extra: torch.Tensor


class Stepper:
    """Forward, loss, backward and optimizer step for one global batch on this process."""

    def __init__(self, model: DualEncoder, towers: nn.Module, cfg: TrainConfig, device: torch.device,
                 opt: torch.optim.Optimizer, sched, scaler: torch.amp.GradScaler) -> None:
        self.model, self.towers, self.cfg, self.device = model, towers, cfg, device
        self.opt, self.sched, self.scaler = opt, sched, scaler
        self.amp = amp_dtype(cfg, device)
        self.ddp = isinstance(towers, nn.parallel.DistributedDataParallel)

    def features(self, batch: Batch, net: nn.Module) -> Features:
        n = len(batch)
        pixels = torch.cat([batch.img1, batch.img2]).to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        enc = {k: v.to(self.device) for k, v in self.model.tokenize(batch.text1 + batch.text2 + batch.extra_texts)
               .items()}
        with torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            img, txt = net(pixels, enc["input_ids"], enc["attention_mask"])
        img, txt = img.float(), txt.float()
        return Features(img[:n], img[n:], txt[:n], txt[n : 2 * n], txt[2 * n :])

    def loss(self, f: Features, batch_keys: torch.Tensor, extra_keys: torch.Tensor,
             scale_grad: bool = True, extra_rows: torch.Tensor | None = None) -> LossTerms:
        cfg = self.cfg
        scale = self.model.scale().float()
        return cxr_clip_loss(
            f.i1, f.i2, f.t1, f.t2, scale if scale_grad else scale.detach(), cfg.icl_weight, cfg.tcl_weight,
            keys=batch_keys.to(self.device) if cfg.false_negatives else None,
            extra_texts=f.extra if cfg.side_negatives else None,
            extra_keys=extra_keys.to(self.device) if cfg.side_negatives else None,
            extra_rows=extra_rows.to(self.device) if cfg.side_negatives and extra_rows is not None else None,
            side_weight=cfg.side_weight,
        )

    def step(self, batch: Batch) -> LossTerms:
        terms = self.backward(batch)
        self.update()
        return terms

    def backward(self, batch: Batch) -> LossTerms:
        """Gradients of the whole batch's loss (accumulated over micro-batches if configured)."""
        if self.cfg.accum_steps == 1:
            terms = self.loss(self.features(batch, self.towers), batch.keys, batch.extra_keys,
                              extra_rows=batch.extra_rows)
            self.scaler.scale(terms.total).backward()
            return terms
        return self._accumulated(batch)

    def update(self) -> None:
        """Clip, step the optimizer and the schedule, clear the gradients."""
        cfg = self.cfg
        if cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)

    def _accumulated(self, batch: Batch) -> LossTerms:
        """Gradient caching: the contrastive batch stays whole across ``accum_steps`` micro-batches."""
        micro = batch.split(self.cfg.accum_steps)
        cached, states = [], []
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad():
            for mb in micro:
                states.append(rng_states())
                cached.append(self.features(mb, self.towers.module if self.ddp else self.towers))
        keys = batch.keys
        terms = None
        for j, mb in enumerate(micro):
            with torch.random.fork_rng(devices=devices):
                restore_rng_states(states[j])
                fresh = self.features(mb, self.towers)
            parts = [fresh if k == j else cached[k] for k in range(len(micro))]
            full = Features(*(torch.cat([getattr(p, a) for p in parts]) for a in ("i1", "i2", "t1", "t2", "extra")))
            sync = contextlib.nullcontext() if (not self.ddp or j == len(micro) - 1) else self.towers.no_sync()
            with sync:  # the temperature's gradient is taken once, not once per micro-batch
                terms = self.loss(full, keys, batch.extra_keys, scale_grad=j == len(micro) - 1,
                                  extra_rows=batch.extra_rows)
                self.scaler.scale(terms.total).backward()
        return terms


# ------------------------------------------------------------------------------------ the run
def _write_metrics(run_dir: Path, row: dict) -> None:
    with open(run_dir / METRICS, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """After a resume, drop rows logged after the checkpoint (they will be logged again)."""
    path = run_dir / METRICS
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    last = run_dir / "checkpoints" / LAST
    if last.is_file() and not resume:
        raise CxrError(f"{run_dir} already holds a training run",
                       "pass --resume to continue it, or choose another --out / --run-dir")
    if resume and not last.is_file():
        raise CxrError(f"nothing to resume: {last} does not exist", "start without --resume")


def train(manifest: str | Path | list, out_dir: str | Path, cfg: TrainConfig | None = None, progress: bool = True,
          provenance: dict | None = None, run_dir: str | Path | None = None, resume: bool = False) -> TrainResult:
    """Train on the train split of one or more manifests; write the best epoch to ``out_dir``.

    Several manifests (e.g. MIMIC-CXR + CheXpert) are simply concatenated.
    """
    cfg = cfg or TrainConfig()
    cfg.validate()
    dist_info, device_name = init_distributed(cfg.device)
    try:
        return _train(manifest, Path(out_dir), cfg, progress and dist_info.main, provenance,
                      Path(run_dir) if run_dir else default_run_dir(out_dir), resume, dist_info,
                      torch.device(device_name))
    finally:
        shutdown()


def _train(manifest: str | Path | list, out_dir: Path, cfg: TrainConfig, progress: bool, provenance: dict | None,
           run_dir: Path, resume: bool, dist_info: DistInfo, device: torch.device) -> TrainResult:
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    if device.type == "cuda":  # fixed image shapes: let cuDNN pick the fastest kernels (not bit-reproducible)
        torch.backends.cudnn.benchmark = True
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % dist_info.world:
        raise CxrError(f"batch_size {cfg.batch_size} must be divisible by the {dist_info.world} processes")
    _check_run_dir(run_dir, resume)
    manifests = [Path(m) for m in (manifest if isinstance(manifest, (list, tuple)) else [manifest])]
    studies = [s for m in manifests for s in read_manifest(m)]
    manifest = manifests[0] if len(manifests) == 1 else ", ".join(str(m) for m in manifests)
    train_studies = [s for s in studies if s.split == "train"]
    val_studies = [s for s in studies if s.split == "validate"]
    if len(train_studies) < cfg.batch_size:
        raise ManifestError(f"{manifest}: {len(train_studies)} training studies, fewer than one batch "
                            f"({cfg.batch_size})", "lower --batch-size or add data")
    model = build_model(cfg).to(device)
    trainable = apply_freezing(model, cfg)
    bank = PromptBank.load()
    spec = model.card.image
    train_data = StudyDataset(train_studies, spec, bank, cfg.seed, True, cfg.max_negatives, cfg.cache_images,
                              cfg.hflip_prob, cfg.side_negatives, cfg.clahe_p, tuple(cfg.crop_scale), progress)
    val_data = (StudyDataset(val_studies, spec, bank, cfg.seed, False, cache=cfg.cache_images, progress=progress)
                if val_studies and dist_info.main else None)
    sampler = EpochBatches(len(train_data), cfg.batch_size, cfg.seed, dist_info.rank, dist_info.world,
                           cfg.max_steps)
    if sampler.batches == 0:
        raise ManifestError(f"{manifest}: fewer decodable training studies than one batch",
                            "lower --batch-size or fix the images listed above")
    towers: nn.Module = Towers(model)
    if device.type == "cuda":
        towers = towers.to(memory_format=torch.channels_last)
    if dist_info.world > 1:
        towers = nn.parallel.DistributedDataParallel(
            towers, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(param_groups(model, cfg))
    total = sampler.batches * cfg.epochs
    warmup = (round(cfg.warmup_epochs * sampler.batches) if cfg.warmup_epochs is not None
              else round(total * cfg.warmup_fraction))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, max(1, warmup)))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(cfg, device) == torch.float16)
    stepper = Stepper(model, towers, cfg, device, opt, sched, scaler)

    ckpt_dir = run_dir / "checkpoints"
    epoch, start, step = 1, 0, 0
    best_score, best_epoch = math.inf, -1
    history: list[dict] = []
    resumed_losses: list[float] = []
    epoch_losses: list[float] = []
    if resume:
        ck = load_checkpoint(ckpt_dir / LAST)
        changed = config_differences(ck["config"], cfg.to_dict())
        if changed:
            raise CxrError(f"the run in {run_dir} used other settings for: {', '.join(changed)}",
                           "resume with the same config (or start a new run in another --out)")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        restore_rng_states(ck["rng"][min(dist_info.rank, len(ck["rng"]) - 1)])
        epoch, start, step = ck["epoch"], ck["batch"], ck["step"]
        best_score, best_epoch, history = ck["best_score"], ck["best_epoch"], ck["history"]
        resumed_losses = ck["epoch_losses"]
        if dist_info.main:
            _truncate_metrics(run_dir, step)
            log.info("resumed %s at epoch %d, batch %d (step %d)", run_dir, epoch, start, step)
    elif dist_info.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / METRICS).unlink(missing_ok=True)
    if dist_info.main:
        (run_dir / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    def checkpoint(next_epoch: int, next_batch: int) -> None:
        states = [rng_states()]
        if dist_info.world > 1:  # every rank's RNG (dropout draws differ by rank)
            gathered: list = [None] * dist_info.world
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        if dist_info.main:
            atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "scaler": scaler.state_dict(), "rng": states, "epoch": next_epoch, "batch": next_batch,
                         "step": step, "best_score": best_score, "best_epoch": best_epoch, "history": history,
                         "epoch_losses": epoch_losses if next_batch else [], "config": cfg.to_dict()}, ckpt_dir / LAST)
        barrier()

    world_batch = cfg.batch_size
    while epoch <= cfg.epochs:
        train_data.set_epoch(epoch)
        sampler.set_position(epoch, start)
        set_train_mode(model)
        loader = DataLoader(train_data, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate,
                            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed),
                            persistent_workers=False)
        bar = tqdm(total=sampler.batches, initial=start, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
                   disable=not progress, leave=False)
        window: list[dict] = []
        t_epoch = time.perf_counter()
        epoch_losses: list[float] = resumed_losses if start else []
        t_data = time.perf_counter()
        for b, batch in enumerate(loader, start=start):
            t_step = time.perf_counter()
            terms = stepper.step(batch)
            values = terms.floats()
            t_end = time.perf_counter()
            step += 1
            epoch_losses.append(values["total"])
            window.append({**values, "data_s": t_step - t_data, "step_s": t_end - t_step})
            if dist_info.main and (step % cfg.log_every == 0 or b + 1 == sampler.batches):
                row = _summarise(window, step, epoch, b, opt, model, world_batch)
                _write_metrics(run_dir, row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", sps=f"{row['samples_per_s']:.1f}",
                                data=f"{row['data_s']:.2f}s", step=f"{row['step_s']:.2f}s")
                window = []
            bar.update(1)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and b + 1 < sampler.batches:
                checkpoint(epoch, b + 1)
            t_data = time.perf_counter()
        bar.close()
        row = {"kind": "epoch", "epoch": epoch, "step": step,
               "train_loss": round(sum(epoch_losses) / max(1, len(epoch_losses)), 4),
               "seconds": round(time.perf_counter() - t_epoch, 1)}
        if val_data is not None:
            row.update(validate(model, val_data, cfg.batch_size, device, cfg.icl_weight, cfg.tcl_weight,
                                cfg.false_negatives, amp_dtype(cfg, device), bank))
            score = selection_score(row, cfg.select_by)
        else:
            score = row["train_loss"]
        if dist_info.main:
            if score < best_score:
                best_score, best_epoch = score, epoch
                atomic_save({"model": model.state_dict(), "epoch": epoch, "score": score}, ckpt_dir / BEST)
            history.append(row)
            _write_metrics(run_dir, row)
            log.info("epoch %s", row)
        epoch, start = epoch + 1, 0
        checkpoint(epoch, 0)

    if not dist_info.main:
        return TrainResult(out_dir, run_dir, best_epoch, history, len(train_data.errors), step, main=False)
    best = load_checkpoint(ckpt_dir / BEST)
    model.load_state_dict(best["model"])
    model.cpu()
    record = {**(provenance or {}), "train_config": cfg.to_dict(), "history": history, "best_epoch": best_epoch,
              "manifest": ", ".join(m.name for m in manifests), "train_studies": len(train_data),
              "validate_studies": len(val_data) if val_data is not None else 0, "trainable_parameters": trainable}
    out = save_model_dir(model, out_dir, changed_only=cfg.changed_only, provenance=record)
    skipped = len(train_data.errors) + (len(val_data.errors) if val_data is not None else 0)
    return TrainResult(out, run_dir, best_epoch, history, skipped, step)


def _summarise(window: list[dict], step: int, epoch: int, batch: int, opt, model: DualEncoder,
               world_batch: int) -> dict:
    n = len(window)
    mean = {k: sum(w[k] for w in window) / n for k in ("total", "clip", "icl", "tcl", "side", "data_s", "step_s")}
    return {"kind": "step", "step": step, "epoch": epoch, "batch": batch + 1, "loss": round(mean["total"], 5),
            "clip": round(mean["clip"], 5), "icl": round(mean["icl"], 5), "tcl": round(mean["tcl"], 5),
            "side": round(mean["side"], 5),
            "lr": opt.param_groups[0]["lr"], "scale": round(float(model.scale().detach()), 3),
            "data_s": round(mean["data_s"], 4), "step_s": round(mean["step_s"], 4),
            "samples_per_s": round(world_batch / max(1e-9, mean["data_s"] + mean["step_s"]), 2)}
