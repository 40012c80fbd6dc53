"""The image side of a model on ONNX Runtime, for CPUs: exported once, checked against torch, cached.

On a CPU the model is the bottleneck of embedding (docs/benchmarks.md), and ONNX Runtime runs the
same graph markedly faster than eager torch (fused convolutions, no Python between layers). What is
exported is everything :meth:`DualEncoder.encode_pixels` does after preprocessing: the tower, the
mirror pass of a ``flip_pair`` model, pooling, projection and normalisation, so one ONNX call turns
a preprocessed batch into the vectors torch would write.

The same vectors, or not used: every time a model switches to ONNX Runtime
(:meth:`DualEncoder.use_runtime`), the first real images it is given (up to :data:`CHECK_IMAGES` of
the first batch) are embedded by both engines and must agree at cosine >= ``onnx_export.MIN_COSINE`` for
every image; otherwise ONNX Runtime is not used and the reason is logged once. That is why shards
from either path share one vector id and mix in one index.

Exports are cached under ``$CXRTOOL_CACHE/onnx`` (default ``~/.cache/cxrtool/onnx``; the exporter is
:mod:`cxrtool.model.onnx_export`, shared with the text side), named by the
model's vector tag (weights fingerprint, embedding mode, pixel tag) and :data:`EXPORT_VERSION`, so a
changed model or exporter never reuses a stale graph. Families whose export fails (an operator
ONNX lacks) fall back to torch with the reason logged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrtool.model.onnx_export import cache_dir, cache_stem, export_module, first_line, open_session, parity

DualEncoder = nn.Module  # (cxrtool.model.dual.DualEncoder; not imported: dual imports this module)

EXPORT_VERSION = 1  # bump when what is exported changes (the cache key includes it)
CHECK_IMAGES = 4  # of the first batch, embedded by both engines before ONNX Runtime takes over
RUNTIMES = ("auto", "onnx", "torch")  # auto: ONNX Runtime on CPU when it exports and verifies, else torch


def export_path(model: DualEncoder) -> Path:
    return cache_dir() / f"{cache_stem(model.card.vector_tag, 'image', EXPORT_VERSION)}.onnx"


class ImageSide(nn.Module):
    """What encode_pixels computes after preprocessing, as one module torch can export."""

    def __init__(self, model: DualEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.image_vectors(pixels)


@dataclass
class OnnxImage:
    """An ONNX Runtime session over an exported image side; called like encode_pixels."""

    session: object
    path: Path
    input_name: str
    threads: int

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        pixels = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return self.session.run(None, {self.input_name: pixels})[0].astype(np.float32, copy=False)


def export(model: DualEncoder, path: Path, sample: torch.Tensor) -> None:
    """Trace the image side on ``sample`` (batch dimension dynamic) and write it atomically."""
    export_module(ImageSide(model), (sample.detach().to("cpu", torch.float32).clone(),), path, ["pixels"],
                  ["vectors"], {"pixels": {0: "batch"}, "vectors": {0: "batch"}})


def open_or_export(model: DualEncoder, threads: int | None = None) -> tuple[OnnxImage | None, str]:
    """(runner, '') for the model's cached export, exported now (traced on a blank batch: the image
    side has no data-dependent branches) if there is none; else (None, why). Not yet checked against
    torch: :func:`check` does that on the first real batch."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None, "onnxruntime is not installed (pip install onnxruntime onnx)"
    spec = model.card.image
    try:
        path = export_path(model)
        if not path.is_file():  # traced at an odd batch, so a size baked into the graph shows in the check
            export(model, path, torch.zeros(3, spec.in_channels, spec.input_size, spec.input_size))
    except Exception as exc:  # an operator ONNX lacks, a read-only or missing cache folder: torch it is
        return None, f"export to ONNX failed for this model ({type(exc).__name__}: {first_line(exc)})"
    try:
        session = open_session(path, threads or torch.get_num_threads())
        return OnnxImage(session, path, session.get_inputs()[0].name, threads or torch.get_num_threads()), ""
    except Exception as exc:  # a corrupt or foreign file in the cache: made afresh next time
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return None, f"the cached ONNX export could not be loaded ({type(exc).__name__}: {first_line(exc)})"


def check(runner: OnnxImage, batch: torch.Tensor, reference: np.ndarray) -> str:
    """'' when ONNX Runtime gives ``reference`` (torch's vectors of the real ``batch``) at cosine >=
    MIN_COSINE for every image, else why not."""
    try:
        got = runner(batch)
    except Exception as exc:  # noqa: BLE001 - a runtime failure on real input: torch it is
        return f"ONNX Runtime failed on the first batch ({type(exc).__name__}: {first_line(exc)})"
    return parity(got, reference, "the first images")
