"""The image side of a model on ONNX Runtime, for CPUs: exported once, checked against torch, cached.

On a CPU the model is the bottleneck of embedding (docs/benchmarks.md), and ONNX Runtime runs the
same graph markedly faster than eager torch (fused convolutions, no Python between layers). What is
exported is everything :meth:`DualEncoder.encode_pixels` does after preprocessing: the tower, the
mirror pass of a ``flip_pair`` model, pooling, projection and normalisation, so one ONNX call turns
a preprocessed batch into the vectors torch would write.

The same vectors, or not used: every time a model switches to ONNX Runtime
(:meth:`DualEncoder.use_runtime`), the first real images it is given (up to :data:`CHECK_IMAGES` of
the first batch) are embedded by both engines and must agree at cosine >= :data:`MIN_COSINE` for
every image; otherwise ONNX Runtime is not used and the reason is logged once. That is why shards
from either path share one vector id and mix in one index.

Exports are cached under ``$CXRTOOL_CACHE/onnx`` (default ``~/.cache/cxrtool/onnx``), named by the
model's vector tag (weights fingerprint, embedding mode, pixel tag) and :data:`EXPORT_VERSION`, so a
changed model or exporter never reuses a stale graph. Families whose export fails (an operator
ONNX lacks) fall back to torch with the reason logged.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrtool.constants import CACHE_ENV, DEFAULT_CACHE

DualEncoder = nn.Module  # (cxrtool.model.dual.DualEncoder; not imported: dual imports this module)

EXPORT_VERSION = 1  # bump when what is exported changes (the cache key includes it)
OPSET = 17
MIN_COSINE = 0.99999  # (the bar is 0.9999; the measured gap is ~1e-7, so a real export error shows)
CHECK_IMAGES = 4  # of the first batch, embedded by both engines before ONNX Runtime takes over
RUNTIMES = ("auto", "onnx", "torch")  # auto: ONNX Runtime on CPU when it exports and verifies, else torch


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser() / "onnx"


def export_path(model: DualEncoder) -> Path:
    tag = model.card.vector_tag.replace("sha256:", "").replace(":", "-")
    return cache_dir() / f"image-{tag}-x{EXPORT_VERSION}.onnx"


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        # (out of inference mode: encode_pixels runs in it, and the tracer cannot record inference tensors)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            sample = sample.detach().to("cpu", torch.float32).clone()
            kwargs = {"input_names": ["pixels"], "output_names": ["vectors"], "opset_version": OPSET,
                      "dynamic_axes": {"pixels": {0: "batch"}, "vectors": {0: "batch"}}}
            try:  # the TorchScript exporter: dynamo=False where torch has both (2.5+; dynamo needs onnxscript)
                torch.onnx.export(ImageSide(model).eval(), (sample,), tmp, dynamo=False, **kwargs)
            except TypeError:
                torch.onnx.export(ImageSide(model).eval(), (sample,), tmp, **kwargs)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)  # a shared cache: readable by the other users of the machine
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def open_session(path: Path, threads: int) -> OnnxImage:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # no spinning between runs: in the embed loop the same cores decode the next batch meanwhile
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return OnnxImage(session, path, session.get_inputs()[0].name, threads)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest per-row cosine between two batches of vectors."""
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float((num / np.maximum(den, 1e-12)).min()) if len(a) else 1.0


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
        return None, f"export to ONNX failed for this model ({type(exc).__name__}: {_first_line(exc)})"
    try:
        return open_session(path, threads or torch.get_num_threads()), ""
    except Exception as exc:  # a corrupt or foreign file in the cache: made afresh next time
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return None, f"the cached ONNX export could not be loaded ({type(exc).__name__}: {_first_line(exc)})"


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def check(runner: OnnxImage, batch: torch.Tensor, reference: np.ndarray) -> str:
    """'' when ONNX Runtime gives ``reference`` (torch's vectors of the real ``batch``) at cosine >=
    MIN_COSINE for every image, else why not."""
    try:
        got = runner(batch)
    except Exception as exc:  # noqa: BLE001 - a runtime failure on real input: torch it is
        return f"ONNX Runtime failed on the first batch ({type(exc).__name__}: {_first_line(exc)})"
    if got.shape != reference.shape:
        return f"the ONNX graph gave shape {got.shape}, torch {reference.shape}"
    cos = min_cosine(got, reference)
    if not cos >= MIN_COSINE:
        return f"ONNX Runtime vectors differ from torch's (min cosine {cos:.6f} < {MIN_COSINE})"
    return ""
