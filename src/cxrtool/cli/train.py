"""`cxrtool train MANIFEST --out DIR`."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrtool.cli.common import out, pick_device, print_json, run
from cxrtool.model.sources import EFFNET_LITE0_PACKAGE, MINILM_PACKAGE
from cxrtool.train import TrainConfig, train


def train_cmd(
    manifest: Path = typer.Argument(..., help="Study manifest from `cxrtool prepare`."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    image_model: str = typer.Option("efficientnet_lite0", help="timm model name for the image tower."),
    image_weights: str = typer.Option(EFFNET_LITE0_PACKAGE,
                                      help="Image weight source: a package name, timm:NAME, or 'none'."),
    text_model: str = typer.Option(MINILM_PACKAGE,
                                   help="Hugging Face hub name or local directory of the text encoder."),
    init_from: Path = typer.Option(None, help="Continue from an existing model directory instead."),
    epochs: int = typer.Option(5), batch_size: int = typer.Option(32), lr: float = typer.Option(1e-4),
    embed_dim: int = typer.Option(512, help="Shared embedding dimension."),
    input_size: int = typer.Option(224, help="Image input size in pixels."),
    freeze_text: bool = typer.Option(False, help="Keep the text tower fixed (train projections only)."),
    freeze_image: bool = typer.Option(False, help="Keep the image tower fixed."),
    targets: str = typer.Option("text", help="Contrastive targets: 'text' (identical texts are positives) or "
                                             "'labels' (label-only studies sharing findings are partial positives)."),
    max_negatives: int = typer.Option(3, help="Negative sentences sampled per label-only training text."),
    changed_only: bool = typer.Option(False, help="Store only weights that differ from the base sources."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1 ... or auto."),
    seed: int = typer.Option(0),
    max_steps: int = typer.Option(None, help="Cap on steps per epoch (quick trials)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Contrastive (CLIP) training of the dual encoder on a manifest; saves the best epoch."""
    cfg = TrainConfig(image_model=image_model, image_weights=None if image_weights == "none" else image_weights,
                      text_model=text_model, init_from=str(init_from) if init_from else None, epochs=epochs,
                      batch_size=batch_size, lr=lr, embed_dim=embed_dim, input_size=input_size,
                      freeze_text=freeze_text, freeze_image=freeze_image, changed_only=changed_only,
                      targets=targets, max_negatives=max_negatives,
                      device=pick_device(device), seed=seed, max_steps=max_steps)
    result = run(lambda: train(manifest, out_dir, cfg, progress=not as_json))
    if as_json:
        print_json({"model_dir": str(result.model_dir), "best_epoch": result.best_epoch, "history": result.history,
                    "skipped_images": result.skipped_images})
        return
    for row in result.history:
        out.print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
                  f"{row['images_per_s']} img/s")
    out.print(f"saved [bold]{result.model_dir}[/] (best epoch {result.best_epoch})")
