"""What every checkpoint importer shares: the strict weight placement, the report, the write + verify.

Placement is driven by the target model: for each tensor cxrtool's model needs, the importer names
the checkpoint key it comes from. A needed key the checkpoint lacks is *missing*; a checkpoint key
nobody asked for is *unexpected*, unless the importer declares it an obsolete buffer (a value the
installed library recomputes, such as BERT's ``position_ids``), which is then checked against the
recomputed value and listed in the report. Anything else refuses the import by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrtool.errors import CheckpointMismatchError, ModelError
from cxrtool.model.card import CARD_FILE
from cxrtool.model.hub import models_home
from cxrtool.model.imports.safe_pickle import sha256_file


@dataclass
class ImportReport:
    """What an import read, placed, dropped and wrote; the CLI prints it, the card keeps it."""

    format: str  # "cxr-clip" | "chexzero" | "biovil" | "biovil-t" | "medclip" | "gloria"
    source: str  # the checkpoint file
    sha256: str  # of the checkpoint file's bytes
    architecture: str
    out_dir: str = ""
    fingerprint: str = ""  # of the written model (sha256 over every tensor)
    tensors: int = 0  # checkpoint tensors placed into the model
    dropped: list[str] = field(default_factory=list)  # obsolete buffers, verified equal to the recomputed ones
    ignored: list[str] = field(default_factory=list)  # top-level entries not needed to embed (optimizer, ...)
    epoch: int | None = None
    licence: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_value(config: Any, *path: str) -> Any:
    """``config[path[0]][path[1]]...`` of a checkpoint's (plain) config, None where any step is missing."""
    for key in path:
        if not isinstance(config, Mapping) or key not in config:
            return None
        config = config[key]
    return config


def out_dir_for(out_dir: str | Path | None, fmt: str, checkpoint: Path) -> Path:
    """``out_dir``, else FORMAT/STEM under the models home, where `cxrtool models` lists it and
    ``--model FORMAT/STEM`` finds it."""
    return Path(out_dir).expanduser() if out_dir is not None else models_home() / fmt / checkpoint.stem


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace an existing model unless asked (an import is cheap to redo, a lost model is not)."""
    if (out_dir / CARD_FILE).is_file() and not overwrite:
        raise ModelError(f"{out_dir} already holds a model", "pass --overwrite to replace it, or choose another -o")


def check_file(path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint file", "give the path of the downloaded checkpoint")


def prepare_import(checkpoint: str | Path, out_dir: str | Path | None, fmt: str, overwrite: bool
                   ) -> tuple[Path, Path, str]:
    """(checkpoint path, output directory, sha256) after the checks every importer makes first."""
    path = Path(checkpoint).expanduser()
    out = out_dir_for(out_dir, fmt, path)
    check_file(path)
    check_out_dir(out, overwrite)
    return path, out, sha256_file(path)


def place_weights(
    model: nn.Module,
    checkpoint: Mapping[str, torch.Tensor],
    source_of: Callable[[str], str],
    obsolete: Mapping[str, torch.Tensor],
    source: str,
    layout: str,
    convert: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[int, list[str]]:
    """Fill every tensor of ``model.state_dict()`` from ``checkpoint[source_of(name)]``, or refuse.

    ``obsolete`` maps checkpoint keys that may be dropped to the value the model recomputes for
    them; such a key must hold exactly that value. ``convert(target, tensor)`` reshapes/slices a
    tensor for formats whose layout differs (CheXzero's fused attention). Returns the number of
    checkpoint tensors used and the dropped keys.
    """
    target = model.state_dict()
    wanted = {name: source_of(name) for name in target}
    used = set(wanted.values())
    missing = sorted({key for key in used if key not in checkpoint})
    spare = [key for key in checkpoint if key not in used]
    unexpected = sorted(key for key in spare if key not in obsolete)
    if missing or unexpected:
        raise CheckpointMismatchError(missing, unexpected, source, layout)
    dropped = sorted(key for key in spare if key in obsolete)
    for key in dropped:
        have, recomputed = checkpoint[key].reshape(-1).long(), obsolete[key].reshape(-1).long()
        if have.shape != recomputed.shape or not torch.equal(have, recomputed):
            raise ModelError(f"{source}: buffer {key} differs from what the architecture computes",
                             "the checkpoint was made with another configuration (window size, sequence length)")
    state = {}
    for name, key in wanted.items():
        tensor = checkpoint[key] if convert is None else convert(name, checkpoint[key])
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise ModelError(f"{source}: weight {key} has shape {tuple(tensor.shape)}, the {layout} layout needs "
                             f"{tuple(target[name].shape)} for it",
                             "the checkpoint was made with another configuration, or the text encoder given with "
                             "--text-encoder is not the one it was trained with")
        state[name] = tensor.to(target[name].dtype)
    model.load_state_dict(state, strict=True)
    return len(used), dropped


SWIN_INDEX = "attention.self.relative_position_index"


def recomputed_buffers(state: Mapping[str, torch.Tensor], text_prefix: str, text: nn.Module,
                       swin_prefix: str = "", swin: nn.Module | None = None,
                       text_buffers: tuple[str, ...] = ("embeddings.position_ids",)) -> dict[str, torch.Tensor]:
    """The checkpoint buffers the installed transformers recomputes instead of storing -> the values it
    computes (for :func:`place_weights`' ``obsolete``): BERT's ``text_buffers`` under ``text_prefix``
    and, with a Swin tower, its ``attention.self.relative_position_index`` under ``swin_prefix``."""
    text_bufs, swin_bufs = buffers_of(text), buffers_of(swin) if swin is not None else {}
    out = {}
    for key in state:
        if key.startswith(text_prefix) and key[len(text_prefix):] in text_buffers:
            if (name := key[len(text_prefix):]) in text_bufs:
                out[key] = text_bufs[name]
        elif swin is not None and key.startswith(swin_prefix) and key.endswith(SWIN_INDEX):
            name = key[len(swin_prefix):].replace("attention.self.", "attention.relative_position_bias.")
            if name in swin_bufs:
                out[key] = swin_bufs[name]
    return out


def buffers_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every buffer, persistent or not (state_dict() leaves non-persistent ones out)."""
    return dict(module.named_buffers())


def finish_import(model: nn.Module, out: Path, report: ImportReport, provenance: dict[str, Any]) -> ImportReport:
    """Write the model directory (card with ``provenance``), reload it strictly through its family
    (every tensor placed, fingerprint checked) and complete the report."""
    from cxrtool.model.factory import load_model_dir, save_model_dir

    save_model_dir(model, out, provenance=provenance)
    report.fingerprint = load_model_dir(out).card.fingerprint
    report.out_dir = str(out)
    return report
