"""`cxrtool import FORMAT CHECKPOINT [-o DIR]`: released checkpoints of other projects -> cxrtool model directories."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cxrtool.cli.common import out, print_json, run
from cxrtool.constants import CXR_CLIP_TEXT_ENCODER

if TYPE_CHECKING:
    from cxrtool.model.imports import ImportReport

app = typer.Typer(
    help="Import released CXR-CLIP, CheXzero, BioViL / BioViL-T, MedCLIP and GLoRIA checkpoints as cxrtool model "
         "directories. The file is read "
         "without running any code in it, every weight is placed by name (a missing or unexpected one refuses "
         "the import), and the written model is reloaded strictly before it is reported.",
    no_args_is_help=True,
)

OUT = typer.Option(None, "--out", "-o", help="Model directory to write (default: FORMAT/NAME under the models home, "
                  "$CXRTOOL_MODELS or ~/.cache/cxrtool/models, where `cxrtool models` lists it and --model FORMAT/NAME "
                  "finds it).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace a model already in --out.")
JSON = typer.Option(False, "--json", help="Print the import report as JSON.")


def _render(r: ImportReport, as_json: bool) -> None:
    if as_json:
        print_json(r.to_dict())
        return
    epoch = f", epoch {r.epoch}" if r.epoch is not None else ""
    out.print(f"imported [bold]{Path(r.source).name}[/] ({r.format}: {r.architecture}{epoch}) -> [bold]{r.out_dir}[/]",
              highlight=False)
    out.print(f"{r.tensors} checkpoint tensors placed: every weight of the model came from the file; "
              f"reloaded strictly, fingerprint {r.fingerprint[:19]}...", highlight=False)
    if r.dropped:
        kinds = Counter(key.rsplit(".", 1)[-1] for key in r.dropped)
        out.print(f"dropped {len(r.dropped)} obsolete buffer(s) that transformers now recomputes, each checked equal "
                  f"to the recomputed value: {', '.join(f'{n} x {k}' for k, n in sorted(kinds.items()))} "
                  "(--json lists them)", highlight=False)
    if r.ignored:
        out.print(f"not needed to embed: {', '.join(r.ignored)}", highlight=False)
    out.print(f"sha256 of the checkpoint: {r.sha256}", highlight=False)
    out.print(f"[yellow]licence:[/] {r.licence}", highlight=False)
    out.print(f"use it with --model {r.out_dir}", highlight=False)


@app.command("cxr-clip")
def cxr_clip_cmd(
    checkpoint: Path = typer.Argument(..., help="A released CXR-CLIP file: r50_{m,mc,mcc}.tar or "
                                      "swint_{m,mc,mcc}.tar."),
    out_dir: Path = OUT,
    text_encoder: str = typer.Option(CXR_CLIP_TEXT_ENCODER, "--text-encoder",
                                     help="Hub name or local folder with the text tower's config.json + vocab.txt "
                                          "(its weights come from the checkpoint)."),
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Import a CXR-CLIP checkpoint (ResNet-50 or Swin-T image tower, Bio_ClinicalBERT text tower)."""
    from cxrtool.model.imports import import_cxr_clip

    _render(run(lambda: import_cxr_clip(checkpoint, out_dir, text_encoder=text_encoder, overwrite=overwrite)),
            as_json)


@app.command("chexzero")
def chexzero_cmd(
    checkpoint: Path = typer.Argument(..., help="A released CheXzero .pt file (OpenAI-CLIP ViT-B/32 state dict)."),
    out_dir: Path = OUT,
    tokenizer: str = typer.Option(None, "--tokenizer",
                                  help="CLIP tokenizer: a folder or hub name with vocab.json + merges.txt, or a "
                                       "bpe_simple_vocab_16e6.txt.gz (default: OpenAI's BPE file shipped with "
                                       "open_clip)."),
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Import a CheXzero checkpoint as a transformers CLIPModel (hf-clip family) with CheXzero's preprocessing."""
    from cxrtool.model.imports import import_chexzero

    _render(run(lambda: import_chexzero(checkpoint, out_dir, tokenizer=tokenizer, overwrite=overwrite)), as_json)


BIOVIL_HUB = {"biovil": "microsoft/BiomedVLP-CXR-BERT-specialized", "biovil-t": "microsoft/BiomedVLP-BioViL-T"}
BIOVIL_SOURCE_HELP = ("Hub name or local folder holding config.json, vocab.txt, pytorch_model.bin (or "
                      "model.safetensors) and the image weights {image}; only those files are read (never the "
                      "repository's code).")
TEXT_ENCODER = typer.Option(CXR_CLIP_TEXT_ENCODER, "--text-encoder",
                            help="Hub name or local folder with Bio_ClinicalBERT's config.json + vocab.txt (its "
                                 "weights come from the checkpoint).")


def _biovil(variant: str, source: str, out_dir: Path | None, overwrite: bool, as_json: bool) -> None:
    from cxrtool.model.imports import import_biovil

    _render(run(lambda: import_biovil(source, out_dir, variant=variant, overwrite=overwrite)), as_json)


@app.command("biovil")
def biovil_cmd(
    source: str = typer.Argument(BIOVIL_HUB["biovil"], help=BIOVIL_SOURCE_HELP.format(
        image="biovil_image_resnet50_proj_size_128.pt")),
    out_dir: Path = OUT,
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Import Microsoft's BioViL (ResNet-50 + CXR-BERT, 128-d joint space; MIT, research use only)."""
    _biovil("biovil", source, out_dir, overwrite, as_json)


@app.command("biovil-t")
def biovil_t_cmd(
    source: str = typer.Argument(BIOVIL_HUB["biovil-t"], help=BIOVIL_SOURCE_HELP.format(
        image="biovil_t_image_model_proj_size_128.pt")),
    out_dir: Path = OUT,
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Import Microsoft's BioViL-T, single-image path (its temporal pooler needs a prior image and is left out)."""
    _biovil("biovil-t", source, out_dir, overwrite, as_json)


@app.command("medclip")
def medclip_cmd(
    checkpoint: Path = typer.Argument(..., help="MedCLIP's released medclip-pretrained.zip / "
                                      "medclip-vit-pretrained.zip, the folder it unpacks to, or its "
                                      "pytorch_model.bin."),
    out_dir: Path = OUT,
    text_encoder: str = TEXT_ENCODER,
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Import MedCLIP (ResNet-50 or Swin-T + Bio_ClinicalBERT, 512-d)."""
    from cxrtool.model.imports import import_medclip

    _render(run(lambda: import_medclip(checkpoint, out_dir, text_encoder=text_encoder, overwrite=overwrite)), as_json)


@app.command("gloria")
def gloria_cmd(
    checkpoint: Path = typer.Argument(..., help="GLoRIA's PyTorch Lightning checkpoint (chexpert_resnet50.ckpt)."),
    out_dir: Path = OUT,
    text_encoder: str = TEXT_ENCODER,
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Import GLoRIA (ResNet-50 + Bio_ClinicalBERT, 768-d global embeddings; the local ones are not used)."""
    from cxrtool.model.imports import import_gloria

    _render(run(lambda: import_gloria(checkpoint, out_dir, text_encoder=text_encoder, overwrite=overwrite)), as_json)
