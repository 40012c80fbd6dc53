"""`cxrtool train MANIFEST... --out DIR [--config FILE] [--preset NAME] [--set KEY=VALUE ...] [--resume]`."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrtool.cli.common import DEVICE_HELP, out, pick_device, print_json, run
from cxrtool.constants import TRAIN_PRESETS


def train_cmd(
    manifests: list[Path] = typer.Argument(..., help="Study manifest(s) from `cxrtool prepare` (concatenated)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Model directory to write (the best epoch)."),
    config: Path = typer.Option(None, "--config", "-c", help="TOML or YAML file of settings (see docs/training.md)."),
    preset: str = typer.Option(None, help=f"Start from a preset: {', '.join(TRAIN_PRESETS)}."),
    settings: list[str] = typer.Option(None, "--set", help="Override any setting: --set lr=3e-4 --set icl_weight=0."),
    resume: bool = typer.Option(False, help="Continue the killed run in the run folder exactly where it stopped."),
    run_dir: Path = typer.Option(None, help="Checkpoints, metrics and config (default: OUT.run beside OUT)."),
    image_model: str = typer.Option(None, help="timm model name for the image tower."),
    image_weights: str = typer.Option(None, help="Image weight source: a package name, timm:NAME, or 'none'."),
    text_model: str = typer.Option(None, help="Hugging Face hub name or local directory of the text encoder."),
    init_from: Path = typer.Option(None, help="Continue from an existing model directory instead."),
    epochs: int = typer.Option(None, help="Passes over the training studies (default 5, unless a preset or "
                               "--config sets it)."),
    batch_size: int = typer.Option(None, help="Studies per contrastive batch, over all processes of a torchrun job "
                                   "(default 32, unless a preset or --config sets it)."),
    lr: float = typer.Option(None, help="Peak learning rate (default 0.0001, unless a preset or --config sets it); "
                             "the text backbone uses text_lr, default lr/10 (--set text_lr=...)."),
    accum_steps: int = typer.Option(None, help="Micro-batches per step (the contrastive batch stays whole)."),
    freeze_text: bool = typer.Option(None, help="Keep the text tower fixed."),
    freeze_image: bool = typer.Option(None, help="Keep the image tower fixed."),
    workers: int = typer.Option(None, help="Data-loading worker processes."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    seed: int = typer.Option(None, help="Seed of every random draw (weights, samples, augmentation; default 0)."),
    max_steps: int = typer.Option(None, help="Cap on steps per epoch (quick trials)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Contrastive training (CLIP + image-image + text-text losses); resumable; saves the best epoch."""

    def go():
        from cxrtool.train import parse_overrides, resolve_config, train

        flags = {"image_model": image_model, "text_model": text_model, "epochs": epochs, "batch_size": batch_size,
                 "lr": lr, "accum_steps": accum_steps, "freeze_text": freeze_text, "freeze_image": freeze_image,
                 "workers": workers, "seed": seed, "max_steps": max_steps,
                 "init_from": str(init_from) if init_from else None}
        overrides = {k: v for k, v in flags.items() if v is not None}
        if image_weights is not None:
            overrides["image_weights"] = None if image_weights == "none" else image_weights
        overrides.update(parse_overrides(settings))
        overrides["device"] = pick_device(device)
        cfg = resolve_config(preset, config, overrides)
        return train(manifests, out_dir, cfg, progress=not as_json, run_dir=run_dir, resume=resume)

    result = run(go)
    if not result.main:  # another process of a torchrun job: rank 0 reports
        return
    if as_json:
        print_json({"model_dir": str(result.model_dir), "run_dir": str(result.run_dir),
                    "best_epoch": result.best_epoch, "steps": result.steps, "history": result.history,
                    "skipped_images": result.skipped_images})
        return
    for row in result.history:
        extra = f", val loss {row['val_total']:.4f}" if "val_total" in row else ""
        if "val_auroc" in row:
            extra += f", zero-shot AUROC {row['val_auroc']:.3f}"
        out.print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}{extra}")
    out.print(f"saved [bold]{result.model_dir}[/] (best epoch {result.best_epoch}); run files in {result.run_dir}")
