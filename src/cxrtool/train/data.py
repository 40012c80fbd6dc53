"""Training samples: two views and two texts per study, reproducible draw by draw.

Every random choice for study ``i`` in epoch ``e`` comes from its own generator seeded by
(seed, e, i). A batch is therefore the same whatever the number of data workers, the number of
processes, or where a run was resumed; that is what makes resume exact.

Sampling (CXR-CLIP's rule, with its bugs fixed):

- images: two *different* views when the study has them, else two augmentations of one image;
- texts: findings and impression when both exist; else the one section and the same section
  with its sentences really shuffled; label-only studies get two independent prompt draws.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from cxrtool.data.manifest import Study
from cxrtool.data.prompts import PromptBank
from cxrtool.data.sides import flip_sides, swap_sides
from cxrtool.errors import DecodeError
from cxrtool.io.decode import decode_image
from cxrtool.model.card import ImageSpec
from cxrtool.model.transform import normalize, resize_to_input
from cxrtool.train.augment import train_view
from cxrtool.train.loss import text_keys

log = logging.getLogger(__name__)

_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")


def shrink(pixels: torch.Tensor, side: int) -> torch.Tensor:
    """Downscale so the short side is ``side`` (never upscale): training reads small copies."""
    h, w = pixels.shape
    s = side / min(h, w)
    if s >= 1:
        return pixels
    x = F.interpolate(pixels[None, None], size=(max(1, round(h * s)), max(1, round(w * s))),
                      mode="bilinear", antialias=True, align_corners=False)
    return x[0, 0]


def shuffle_sentences(text: str, rng: random.Random) -> str:
    """The same sentences in another order (when there are at least two)."""
    parts = [p for p in _SENTENCE_RE.split(text.strip()) if p]
    if len(parts) < 2:
        return text
    order = list(range(len(parts)))
    while order == sorted(order):
        rng.shuffle(order)
    return " ".join(parts[i] for i in order)


def study_sides(study: Study) -> dict[str, str]:
    """Finding -> side ('left'/'right'/'bilateral') where the manifest knows it."""
    return dict(getattr(study, "sides", None) or {})


def label_key(study: Study, sides: dict[str, str] | None = None) -> str:
    """What a prompt-converted study's texts mean: its label set (and sides), order-free."""
    labels = ",".join(f"{k}={v}" for k, v in sorted(study.labels.items()) if v in (1, -1))
    side = ",".join(f"{k}:{v}" for k, v in sorted((sides if sides is not None else study_sides(study)).items()))
    return f"labels[{labels or 'none'}|{side}]"


def is_label_only(study: Study) -> bool:
    return not (study.findings or study.impression or study.report)


def text_pair(study: Study, bank: PromptBank, rng: random.Random, max_negatives: int,
              sides: dict[str, str] | None = None) -> tuple[str, str]:
    """Two training texts for a study (see module docstring); prompts name the known sides."""
    sections = [s for s in (study.findings, study.impression) if s]
    if len(sections) == 2:
        return (sections[0], sections[1]) if rng.random() < 0.5 else (sections[1], sections[0])
    if sections or study.report:
        text = sections[0] if sections else study.report
        return text, shuffle_sentences(text, rng)
    sides = study_sides(study) if sides is None else sides
    return (bank.to_text(study.labels, rng, max_negatives=max_negatives, sides=sides),
            bank.to_text(study.labels, rng, max_negatives=max_negatives, sides=sides))


def eval_text_pair(study: Study, bank: PromptBank) -> tuple[str, str]:
    """Deterministic texts for validation: the two sections, or the study's one eval text twice."""
    if study.findings and study.impression:
        return study.findings, study.impression
    text = (study.text or study.findings or study.impression or study.report
            or bank.to_text(study.labels, sides=study_sides(study)))
    return text, text


@dataclass
class Sample:
    index: int
    img1: torch.Tensor  # CxSxS normalised
    img2: torch.Tensor
    text1: str
    text2: str
    keys: tuple[int, int]
    swapped: str | None  # text1 with left/right swapped (a hard negative) when it names a side
    swapped_key: int


class StudyDataset(Dataset):
    """Studies -> :class:`Sample` with deterministic per-(epoch, study) randomness."""

    def __init__(self, studies: list[Study], spec: ImageSpec, bank: PromptBank, seed: int, train: bool = True,
                 max_negatives: int = 3, cache: bool = True, hflip_prob: float = 0.0, side_negatives: bool = False,
                 clahe_p: float = 0.5, crop_scale: tuple[float, float] = (0.7, 1.0), progress: bool = True) -> None:
        self.spec, self.bank, self.seed, self.train = spec, bank, seed, train
        self.max_negatives, self.hflip_prob, self.side_negatives = max_negatives, hflip_prob, side_negatives
        self.clahe_p, self.crop_scale = clahe_p, tuple(crop_scale)
        self.side = round(spec.decode_side * 1.15)
        self.epoch = 0
        self.errors: list[str] = []
        self.cached: list[list[torch.Tensor]] | None = None
        if cache:
            self.studies, self.cached = self._cache(studies, progress)
        else:
            self.studies = studies

    def _decode(self, path: str) -> torch.Tensor:
        pixels = torch.from_numpy(decode_image(path, min_side=self.side).pixels)
        return shrink(pixels, self.side).to(torch.float16)

    def _cache(self, studies: list[Study], progress: bool) -> tuple[list[Study], list[list[torch.Tensor]]]:
        """Decode every image once; studies whose images all fail are dropped and reported."""
        from tqdm import tqdm

        kept, images = [], []
        for study in tqdm(studies, desc="decoding", unit="study", disable=not progress, leave=False):
            ok = []
            for image in study.images:
                try:
                    ok.append(self._decode(image.path))
                except DecodeError as exc:
                    self.errors.append(exc.reason)
            if ok:
                kept.append(study)
                images.append(ok)
        for reason in self.errors[:5]:
            log.warning("skipped image: %s", reason)
        return kept, images

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.studies)

    def _images(self, index: int) -> list[torch.Tensor]:
        if self.cached is not None:
            return self.cached[index]
        out = []
        for image in self.studies[index].images:
            try:
                out.append(self._decode(image.path))
            except DecodeError as exc:  # one bad view: use the others; none left: a blank, logged
                log.warning("skipped image: %s", exc.reason)
        return out or [torch.zeros(self.side, self.side, dtype=torch.float16)]

    def _view(self, pixels: torch.Tensor, rng: random.Random | None, flip: bool) -> torch.Tensor:
        pixels = pixels.float()
        if flip:
            pixels = pixels.flip(-1)
        if rng is None:
            x = resize_to_input(pixels[None, None], self.spec)
        else:
            x = train_view(pixels, self.spec, rng, clahe_p=self.clahe_p, crop_scale=self.crop_scale)
        return normalize(x, self.spec)[0]

    def __getitem__(self, index: int) -> Sample:
        study = self.studies[index]
        images = self._images(index)
        if not self.train:
            t1, t2 = eval_text_pair(study, self.bank)
            i1 = self._view(images[0], None, False)
            i2 = self._view(images[1], None, False) if len(images) > 1 else i1
            return self._sample(index, study, i1, i2, t1, t2, flip=False)
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        a, b = rng.sample(range(len(images)), 2) if len(images) > 1 else (0, 0)
        flip = self.hflip_prob > 0 and rng.random() < self.hflip_prob
        if flip:  # the image's left is now its right: the texts (and side labels) must say so too
            if is_label_only(study):
                t1, t2 = text_pair(study, self.bank, rng, self.max_negatives, flip_sides(study_sides(study)))
            else:
                t1, t2 = (swap_sides(t) for t in text_pair(study, self.bank, rng, self.max_negatives))
        else:
            t1, t2 = text_pair(study, self.bank, rng, self.max_negatives)
        return self._sample(index, study, self._view(images[a], rng, flip), self._view(images[b], rng, flip),
                            t1, t2, flip)

    def _sample(self, index: int, study: Study, i1: torch.Tensor, i2: torch.Tensor, t1: str, t2: str,
                flip: bool) -> Sample:
        sides = study_sides(study)
        if flip:
            sides = flip_sides(sides)
        if is_label_only(study):
            k = text_keys([label_key(study, sides)])[0]
            keys = (k, k)
        else:
            k1, k2 = text_keys([t1, t2])
            keys = (k1, k2)
        swapped, swapped_key = None, -1
        if self.side_negatives:
            other = swap_sides(t1)
            if other != t1:  # the text names a side: the same text with the other side is a hard negative
                swapped = other
                swapped_key = text_keys([label_key(study, flip_sides(sides)) if is_label_only(study) else other])[0]
        return Sample(index, i1, i2, t1, t2, keys, swapped, swapped_key)


@dataclass
class Batch:
    indices: list[int]
    img1: torch.Tensor
    img2: torch.Tensor
    text1: list[str]
    text2: list[str]
    keys: torch.Tensor  # n x 2 int64
    extra_texts: list[str]
    extra_keys: torch.Tensor  # m int64
    extra_rows: torch.Tensor  # m int64: the batch row each side-swapped text was made from

    def __len__(self) -> int:
        return len(self.indices)

    def split(self, parts: int) -> list[Batch]:
        """Equal micro-batches (gradient accumulation); side-swapped texts travel with their rows."""
        n = len(self) // parts
        out = []
        for p in range(parts):
            sl = slice(p * n, (p + 1) * n)
            mine = [e for e, r in enumerate(self.extra_rows.tolist()) if p * n <= r < (p + 1) * n]
            idx = torch.tensor(mine, dtype=torch.long)
            out.append(Batch(self.indices[sl], self.img1[sl], self.img2[sl], self.text1[sl], self.text2[sl],
                             self.keys[sl], [self.extra_texts[e] for e in mine], self.extra_keys[idx],
                             self.extra_rows[idx] - p * n))
        return out


def collate(samples: list[Sample]) -> Batch:
    extra = [(s.swapped, s.swapped_key, row) for row, s in enumerate(samples) if s.swapped]
    return Batch(
        [s.index for s in samples], torch.stack([s.img1 for s in samples]), torch.stack([s.img2 for s in samples]),
        [s.text1 for s in samples], [s.text2 for s in samples], torch.tensor([s.keys for s in samples]),
        [t for t, _, _ in extra], torch.tensor([k for _, k, _ in extra], dtype=torch.int64),
        torch.tensor([r for _, _, r in extra], dtype=torch.int64),
    )


class EpochBatches(Sampler[list[int]]):
    """This rank's share of each global batch of an epoch, from batch ``start`` on.

    The epoch's order is a permutation seeded by (seed, epoch): the same for every rank and every
    resume. Each global batch of ``batch_size`` studies is cut into ``world`` equal parts.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 max_batches: int | None = None) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_rank = batch_size // world
        self.batches = max(1, n // batch_size) if n >= batch_size else 0
        if max_batches:
            self.batches = min(self.batches, max_batches)
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(0, self.batches - self.start)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        for b in range(self.start, self.batches):
            chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield chunk[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
