"""A contact sheet of search results: thumbnails with rank and score, for people who would
rather look than read. Images are decoded through the same core as embedding."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrtool.errors import CxrError, WorkspaceError
from cxrtool.io.decode import decode_image


def save_grid(hits: Sequence, archive: str | Path, out: str | Path, thumb: int = 256, columns: int = 5,
              title: str = "") -> Path:
    """Write a PNG grid of the hits' images (paths relative to ``archive``); an image that cannot
    be read any more gets a grey tile with the reason instead of failing the whole sheet."""
    from PIL import Image, ImageDraw, ImageFont

    if not hits:
        raise WorkspaceError("no results to draw")
    archive = Path(archive)
    columns = max(1, min(columns, len(hits)))
    rows = math.ceil(len(hits) / columns)
    label_h, title_h = 34, 28 if title else 0
    sheet = Image.new("L", (columns * thumb, title_h + rows * (thumb + label_h)), 255)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((6, 6), title[:120], fill=0, font=font)
    for n, hit in enumerate(hits):
        x, y = (n % columns) * thumb, title_h + (n // columns) * (thumb + label_h)
        try:
            pixels = decode_image(archive / hit.path, min_side=thumb).pixels
            tile = Image.fromarray(np.clip(pixels * 255, 0, 255).astype(np.uint8))
            tile.thumbnail((thumb - 4, thumb - 4))
        except CxrError as exc:
            tile = Image.new("L", (thumb - 4, thumb - 4), 200)
            ImageDraw.Draw(tile).text((6, thumb // 2), getattr(exc, "short_reason", exc.reason)[:38], fill=0, font=font)
        sheet.paste(tile, (x + (thumb - tile.width) // 2, y + 2))
        caption = f"#{hit.rank}  {hit.score:.3f}  {hit.view or ''}"
        draw.text((x + 4, y + thumb + 2), caption, fill=0, font=font)
        draw.text((x + 4, y + thumb + 16), Path(hit.path).name[-36:], fill=90, font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
