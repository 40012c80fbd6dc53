"""The training loop: manifest in, model directory out.

CPU-friendly by design: images are decoded once into a small in-memory cache, towers can be
frozen, and the best epoch (lowest validation contrastive loss, CXR-CLIP's rule) is what gets
saved. On CUDA it uses bf16 autocast and channels_last.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cxrtool.data.manifest import read_manifest
from cxrtool.data.prompts import PromptBank
from cxrtool.errors import ManifestError, ModelError
from cxrtool.model.directory import create_model, load_model_dir, save_model_dir
from cxrtool.model.dual import DualEncoder
from cxrtool.model.sources import EFFNET_LITE0_PACKAGE, MINILM_PACKAGE
from cxrtool.model.transform import normalize, resize_to_input
from cxrtool.train.augment import train_view
from cxrtool.train.loss import clip_loss, label_match_targets, text_match_targets
from cxrtool.train.studies import CachedStudy, cache_studies, draw_text

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved into the model card's provenance)."""

    image_model: str = "efficientnet_lite0"
    image_weights: str | None = EFFNET_LITE0_PACKAGE
    text_model: str = MINILM_PACKAGE
    init_from: str | None = None  # an existing model directory to continue from
    embed_dim: int = 512
    input_size: int = 224
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-4
    text_lr: float | None = None  # defaults to lr / 10 (pretrained language models move slowly)
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    freeze_text: bool = False
    freeze_image: bool = False
    max_negatives: int = 3
    targets: str = "text"  # "text": identical texts are positives; "labels": label overlap (label-only data)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    changed_only: bool = False  # save only weights that differ from the base sources
    max_steps: int | None = None  # cap per epoch (smoke runs)


@dataclass
class TrainResult:
    model_dir: Path
    best_epoch: int
    history: list[dict]
    skipped_images: int


def _param_groups(model: DualEncoder, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms and the temperature; slower text tower."""
    text_lr = cfg.text_lr if cfg.text_lr is not None else cfg.lr / 10
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if (p.ndim < 2 or name == "logit_scale") else cfg.weight_decay
        lr = text_lr if name.startswith("text_backbone.") else cfg.lr
        groups.setdefault((lr, decay), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd, "initial_lr": lr} for (lr, wd), ps in groups.items()]


def _batch_images(items: list[CachedStudy], model: DualEncoder, rng: random.Random | None) -> torch.Tensor:
    spec = model.card.image
    views = []
    for item in items:
        pixels = (rng.choice(item.images) if rng else item.images[0]).float()
        x = train_view(pixels, spec, rng) if rng else resize_to_input(pixels[None, None], spec)
        views.append(x)
    return normalize(torch.cat(views), spec)


def _targets(items: list[CachedStudy], texts: list[str], how: str, device: torch.device) -> torch.Tensor:
    studies = [c.study for c in items]
    if how == "labels" and all(s.labels and not s.report and not s.findings for s in studies):
        return label_match_targets([s.labels for s in studies], device)
    return text_match_targets(texts, device)


def _forward_loss(model: DualEncoder, images: torch.Tensor, texts: list[str], device: torch.device,
                  targets: torch.Tensor) -> torch.Tensor:
    enc = {k: v.to(device) for k, v in model.tokenize(texts).items()}
    images = images.to(device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        img = model.image_features(images)
        txt = model.text_features(**enc)
    return clip_loss(img.float(), txt.float(), model.scale(), targets)


@torch.no_grad()
def _validate(model: DualEncoder, items: list[CachedStudy], batch_size: int, device: torch.device) -> float:
    model.eval()
    losses = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        if len(chunk) < 2:
            continue
        texts = [c.study.text for c in chunk]
        losses.append(float(_forward_loss(model, _batch_images(chunk, model, None), texts, device,
                                          text_match_targets(texts, device))))
    return sum(losses) / max(len(losses), 1)


def train(manifest: str | Path, out_dir: str | Path, cfg: TrainConfig | None = None,
          progress: bool = True, provenance: dict | None = None) -> TrainResult:
    """Train a dual encoder on a manifest's train split; save the best epoch to ``out_dir``."""
    from tqdm import tqdm

    cfg = cfg or TrainConfig()
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    studies = read_manifest(manifest)
    train_studies = [s for s in studies if s.split == "train"]
    val_studies = [s for s in studies if s.split == "validate"]
    if cfg.targets not in ("text", "labels"):
        raise ManifestError(f"unknown targets {cfg.targets!r}; use 'text' or 'labels'")
    if len(train_studies) < 2:
        raise ManifestError(f"{manifest}: {len(train_studies)} training studies; need at least 2")
    if cfg.init_from:
        model = load_model_dir(cfg.init_from)
        if model.card.family != "cxrtool":
            raise ModelError(f"{cfg.init_from}: fine-tuning a {model.card.family} model is not supported",
                             "train starts from cxrtool-family models; hub models are used as they are (embed, "
                             "search, classify, evaluate)")
    else:
        model = create_model(cfg.image_model, cfg.text_model, cfg.image_weights, embed_dim=cfg.embed_dim,
                             input_size=cfg.input_size)
    model.to(device)
    if cfg.freeze_text:
        model.text_backbone.requires_grad_(False)
    if cfg.freeze_image:
        model.image_backbone.requires_grad_(False)
    side = round(model.card.image.input_size * 1.15)
    train_items, train_err = cache_studies(train_studies, side, progress)
    val_items, val_err = cache_studies(val_studies, side, progress)
    bank = PromptBank.load()
    opt = torch.optim.AdamW(_param_groups(model, cfg))
    steps_per_epoch = len(train_items) // cfg.batch_size or 1
    if cfg.max_steps:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total * cfg.warmup_fraction))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    history: list[dict] = []
    best = (math.inf, -1, None)
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if cfg.freeze_text:
            model.text_backbone.eval()
        if cfg.freeze_image:
            model.image_backbone.eval()
        order = list(range(len(train_items)))
        rng.shuffle(order)
        t0, running = time.time(), []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False)
        for b in bar:
            chunk = [train_items[i] for i in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
            texts = [draw_text(c.study, bank, rng, cfg.max_negatives) for c in chunk]
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * lr_factor(step)
            loss = _forward_loss(model, _batch_images(chunk, model, rng), texts, device,
                                 _targets(chunk, texts, cfg.targets, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            running.append(float(loss.detach()))
            bar.set_postfix(loss=f"{sum(running[-20:]) / len(running[-20:]):.3f}")
        val = _validate(model, val_items, cfg.batch_size, device) if val_items else float("nan")
        seconds = time.time() - t0
        row = {"epoch": epoch, "train_loss": round(sum(running) / len(running), 4), "val_loss": round(val, 4),
               "seconds": round(seconds, 1), "images_per_s": round(len(running) * cfg.batch_size / seconds, 2)}
        history.append(row)
        log.info("epoch %s", row)
        score = val if val_items else row["train_loss"]
        if score < best[0]:
            best = (score, epoch, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))
    model.load_state_dict(best[2])
    model.cpu()
    record = {**(provenance or {}), "train_config": asdict(cfg), "history": history, "best_epoch": best[1],
              "manifest": Path(manifest).name, "train_studies": len(train_items),
              "validate_studies": len(val_items)}
    out = save_model_dir(model, out_dir, changed_only=cfg.changed_only, provenance=record)
    return TrainResult(out, best[1], history, len(train_err) + len(val_err))
