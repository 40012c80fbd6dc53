"""The dual encoder: a timm (or Hugging Face) image tower and a Hugging Face text tower, projected to one space.

This one module serves training (``image_features``/``text_features`` keep gradients), bulk
embedding and search (``encode_images``/``encode_texts`` return L2-normalised float32 arrays, of
the card's ``output_dim``: a ``flip_pair`` card pairs each vector with its mirror's, see
:mod:`cxrtool.model.card`).
Models of the other card families (a native Hugging Face CLIP/SigLIP or open_clip model, see
:mod:`cxrtool.model.families`) are subclasses that swap the towers and keep every method here, so
embed, index, search and evaluate see one interface whatever the family.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrtool.constants import LOGIT_SCALE_INIT
from cxrtool.io.decode import DecodedImage, decode_image
from cxrtool.model.card import ModelCard
from cxrtool.model.text_side import TextSide
from cxrtool.model.transform import preprocess

ImageLike = str | Path | DecodedImage | np.ndarray
log = logging.getLogger(__name__)


def halves_pool(fmap: torch.Tensor) -> torch.Tensor:
    """NxCxHxW feature map -> Nx2C: the mean over the image's left half, then over its right half.

    With an odd width the middle column belongs to both halves. (On a PA/AP film the image's left
    half is the patient's right side.)
    """
    if fmap.ndim != 4:
        raise ValueError(f"the 'halves' image feature needs a CNN feature map, got shape {tuple(fmap.shape)}")
    w = fmap.shape[-1]
    h = (w + 1) // 2
    return torch.cat([fmap[..., :h].mean((2, 3)), fmap[..., w - h :].mean((2, 3))], dim=1)


def pair_halves(straight: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Two NxD unit-vector batches -> Nx2D unit vectors [straight; mirrored] / sqrt(2) (``flip_pair``)."""
    return torch.cat([straight, mirrored], dim=-1) / np.sqrt(2.0)


class DualEncoder(nn.Module, TextSide):
    """CLIP-style dual encoder whose architecture and preprocessing are fixed by its card."""

    def __init__(self, card: ModelCard, image_backbone: nn.Module, text_backbone: nn.Module, tokenizer) -> None:
        super().__init__()
        self.card = card
        self.origin = ""  # what it was loaded from (factory.model_origin, or a hub name): a workspace records it
        self.image_backbone = image_backbone
        self.text_backbone = text_backbone
        self.tokenizer = tokenizer
        bias = card.projection_bias
        self.image_proj = nn.Linear(card.image.feature_dim, card.embed_dim, bias=bias)
        self.text_proj = nn.Linear(card.text.feature_dim, card.embed_dim, bias=bias)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT, dtype=torch.float32))

    # ------------------------------------------------------------------ differentiable features
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """NxCxSxS preprocessed images -> NxD unit vectors."""
        if self.card.image.backend == "hf":  # a Hugging Face vision model: the card names the feature
            out = self.image_backbone(pixel_values=pixels)
            feats = out.last_hidden_state[:, 0] if self.card.image.feature == "first_token" else out.pooler_output
        elif self.card.image.feature == "halves":
            feats = halves_pool(self.image_backbone.forward_features(pixels))
        else:
            feats = self.image_backbone(pixels)
            if feats.ndim > 2:  # towers that return token/feature maps: pool them
                feats = feats.flatten(2).mean(-1) if feats.ndim == 4 else feats[:, 0]
        return F.normalize(self.image_proj(feats), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Tokenized text -> NxD unit vectors, pooled as the card says."""
        out = self.text_backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        pooling = self.card.text.pooling
        if pooling == "cls":
            pooled = hidden[:, 0]
        elif pooling == "eos":  # CXR-CLIP: the last real token ([SEP]) of each sequence
            last = attention_mask.sum(1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped to the card's maximum."""
        return self.logit_scale.clamp(max=self.card.logit_scale_max).exp()

    def bias(self) -> torch.Tensor:
        """The logit bias of sigmoid scoring (SigLIP); none in a CLIP-style model."""
        return torch.zeros((), device=self.device)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids + attention mask, padded as the card says (SigLIP: always to max_length)."""
        padding = "max_length" if self.card.text.padding == "max_length" else True
        enc = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=self.card.text.max_length, return_tensors="pt"
        )
        ids = enc["input_ids"]
        mask = enc["attention_mask"] if "attention_mask" in enc else torch.ones_like(ids)
        return {"input_ids": ids, "attention_mask": mask}

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """Decode (if needed) and apply the card's eval transform: -> CxSxS tensor."""
        if isinstance(image, (str, Path)):
            image = decode_image(image, min_side=self.card.image.decode_side)
        if isinstance(image, DecodedImage):
            image = image.pixels
        return preprocess(image, self.card.image)

    # --------------------------------------------------------------------- inference (numpy out)
    # Which engine runs encode_pixels on a CPU (see use_runtime): torch unless a command asks for more.
    runtime = "torch"
    runtime_note = ""  # what use_runtime decided, for run logs and summaries
    _onnx = None  # the verified ONNX Runtime runner, once decided
    _runtime_decided = False

    def image_vectors(self, batch: torch.Tensor, autocast: bool = False) -> torch.Tensor:
        """A preprocessed batch on this model's device -> N x ``card.output_dim`` unit vectors: the
        tower (with the mirror pass of a ``flip_pair`` card), pooling, projection, normalisation.
        This is what the ONNX export holds (:mod:`cxrtool.model.onnx_image`)."""
        flip_pair = self.card.embedding == "flip_pair"
        if flip_pair:  # one forward pass over the images and their mirror images
            batch = torch.cat([batch, batch.flip(-1)])
        if autocast:
            with torch.autocast("cuda", dtype=torch.float16):
                feats = self.image_features(batch)
        else:
            feats = self.image_features(batch)
        feats = F.normalize(feats.float(), dim=-1)
        return pair_halves(*feats.chunk(2)) if flip_pair else feats

    def use_runtime(self, runtime: str = "auto") -> None:
        """Choose the CPU engine of encode_pixels: ``torch``; ``onnx`` (ONNX Runtime, or an error saying
        why not); ``auto`` (ONNX Runtime where the model exports, else torch). The export is made (or
        found in the cache) now; the first real batch is then embedded by both engines, which must
        agree (cos >= onnx_image.MIN_COSINE per image), before ONNX Runtime takes over (else torch,
        saying why). A later ONNX Runtime failure falls back the same way (``onnx``: an error)."""
        from cxrtool.errors import ModelError
        from cxrtool.model.onnx_image import RUNTIMES, open_or_export

        if runtime not in RUNTIMES:
            raise ModelError(f"unknown runtime {runtime!r}", f"use one of {', '.join(RUNTIMES)}")
        self.runtime, self._onnx, self._runtime_decided, self.runtime_note = runtime, None, True, "torch"
        if runtime == "torch" or self.device.type != "cpu":
            self.runtime = "torch"
            return
        runner, why = open_or_export(self) if self.card.fingerprint else (
            None, "the model has no fingerprint (not loaded from a model directory)")
        if runner is None:
            self._fall_back(why)
            return
        self._onnx, self._runtime_decided = runner, False
        self.runtime_note = f"onnxruntime ({runner.threads} threads; not yet checked)"

    @contextlib.contextmanager
    def runtime_scope(self, runtime: str) -> Iterator[DualEncoder]:
        """:meth:`use_runtime` for one job (an embed run); afterwards the model is back on the engine it
        had (its runtime, session and check state), so a library caller's model object does not change
        engine behind its back, whether the job ends or fails."""
        before = (self.runtime, self._onnx, self._runtime_decided, self.runtime_note)
        try:
            self.use_runtime(runtime)
            yield self
        finally:
            self.runtime, self._onnx, self._runtime_decided, self.runtime_note = before

    def __getstate__(self) -> dict:
        """Pickled or copied (Ray actors, deepcopy), a model travels without its ONNX Runtime session
        (sessions cannot be pickled); the copy runs torch until it chooses a runtime itself."""
        state = dict(super().__getstate__())
        state.update(_onnx=None, _runtime_decided=True, runtime="torch", runtime_note="torch")
        return state

    @property
    def onnx_active(self) -> bool:
        """Whether encode_pixels runs on ONNX Runtime (pending its first-batch check, or past it)."""
        return self._onnx is not None

    def _fall_back(self, why: str) -> None:
        from cxrtool.errors import ModelError

        self._onnx, self._runtime_decided = None, True  # never the unchecked graph again, raised or not
        if self.runtime == "onnx":
            self.runtime_note = f"refused: {why}"
            raise ModelError(f"--runtime onnx: {why}", "use --runtime torch (or auto, which falls back)")
        self.runtime_note = f"torch (ONNX Runtime not used: {why})"
        log.warning("image encoding stays on torch: %s", why)

    def _check_runtime(self, batch: torch.Tensor) -> None:
        from cxrtool.model.onnx_image import CHECK_IMAGES, check

        self._runtime_decided = True
        sample = batch[:CHECK_IMAGES]
        why = check(self._onnx, sample, self.image_vectors(sample).cpu().numpy())
        if why:
            self._fall_back(why)
        else:
            self.runtime_note = f"onnxruntime ({self._onnx.threads} threads; matches torch on the first images)"

    @torch.inference_mode()
    def encode_pixels(self, batch: torch.Tensor) -> np.ndarray:
        """A preprocessed batch (NxCxSxS) -> N x ``card.output_dim`` float32 unit vectors (on a CPU through
        ONNX Runtime where :meth:`use_runtime` chose it)."""
        self.eval()
        if self._onnx is not None and self.device.type == "cpu":
            if not self._runtime_decided:
                self._check_runtime(batch)
            if self._onnx is not None:
                try:
                    return self._onnx(batch)
                except Exception as exc:  # noqa: BLE001 - onnxruntime's own errors (memory, a shape): torch goes on
                    self._fall_back(f"ONNX Runtime failed on a batch of {len(batch)} ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:160] if str(exc) else ''})")
        batch = batch.to(self.device, non_blocking=True)
        cuda = self.device.type == "cuda"
        if cuda:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.image_vectors(batch, autocast=cuda).cpu().numpy().astype(np.float32)

    def encode_images(self, images: Iterable[ImageLike], batch_size: int = 32) -> np.ndarray:
        """Paths, decoded images or [0, 1] arrays -> NxD L2-normalised float32."""
        out, batch = [], []
        for image in images:
            batch.append(self.preprocess(image))
            if len(batch) == batch_size:
                out.append(self.encode_pixels(torch.stack(batch)))
                batch = []
        if batch:
            out.append(self.encode_pixels(torch.stack(batch)))
        if not out:
            return np.zeros((0, self.card.output_dim), dtype=np.float32)
        return np.concatenate(out)

    @torch.inference_mode()
    def _encode_texts(self, texts: list[str], batch_size: int) -> np.ndarray:
        self.eval()
        out = []
        for i in range(0, len(texts), batch_size):
            enc = {k: v.to(self.device) for k, v in self.tokenize(texts[i : i + batch_size]).items()}
            out.append(self.text_features(**enc).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.card.embed_dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)
