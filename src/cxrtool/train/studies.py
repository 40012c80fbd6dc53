"""Training samples from manifest studies: cached decoded images and per-draw texts."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cxrtool.data.manifest import Study
from cxrtool.data.prompts import PromptBank
from cxrtool.errors import DecodeError
from cxrtool.io.decode import decode_image

log = logging.getLogger(__name__)


@dataclass
class CachedStudy:
    study: Study
    images: list[torch.Tensor]  # HxW float16 in [0, 1], short side ~= cache_side


def shrink(pixels: torch.Tensor, side: int) -> torch.Tensor:
    """Downscale so the short side is ``side`` (never upscale): training reads small copies."""
    h, w = pixels.shape
    s = side / min(h, w)
    if s >= 1:
        return pixels
    x = F.interpolate(pixels[None, None], size=(max(1, round(h * s)), max(1, round(w * s))),
                      mode="bilinear", antialias=True, align_corners=False)
    return x[0, 0]


def cache_studies(studies: list[Study], side: int, progress: bool = True) -> tuple[list[CachedStudy], list[str]]:
    """Decode every image once; studies whose images all fail are dropped and reported."""
    from tqdm import tqdm

    out, errors = [], []
    for study in tqdm(studies, desc="decoding", unit="study", disable=not progress, leave=False):
        images = []
        for image in study.images:
            try:
                pixels = torch.from_numpy(decode_image(image.path, min_side=side).pixels)
            except DecodeError as exc:
                errors.append(exc.reason)
                continue
            images.append(shrink(pixels, side).to(torch.float16))
        if images:
            out.append(CachedStudy(study, images))
    for reason in errors[:5]:
        log.warning("skipped image: %s", reason)
    return out, errors


def draw_text(study: Study, bank: PromptBank, rng: random.Random, max_negatives: int) -> str:
    """A training text: a random report section if the study has a report, else fresh prompts."""
    sections = [s for s in (study.findings, study.impression) if s]
    if sections:
        return rng.choice(sections)
    if study.report:
        return study.report
    return bank.to_text(study.labels, rng, max_negatives=max_negatives)
