"""The result grid: each query beside its top-k with scores and categories, hits and misses marked.

Drawn with Pillow alone (the image library the core already has), so the demo and ``clothsim search
--grid`` need no plotting library.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from clothsim.errors import UsageError
from clothsim.fileio import atomic_path
from clothsim.images import UNUSABLE_IMAGE_ERRORS, load_image
from clothsim.index.base import SearchHit

logger = logging.getLogger(__name__)

HIT_COLOUR = "#1a9850"
MISS_COLOUR = "#d73027"
#: Pixels around each picture in the grid.
PAD = 6


@dataclass(frozen=True)
class QueryResult:
    """A query image (path or PIL image), its known category if any, and its ranked hits."""

    image: str | Path | Image.Image
    hits: Sequence[SearchHit]
    category: str | None = None
    title: str | None = None


def _thumbnail(source: str | Path | Image.Image, size: int) -> Image.Image:
    try:
        img = source.convert("RGB") if isinstance(source, Image.Image) else load_image(source)
    except UNUSABLE_IMAGE_ERRORS as exc:
        logger.warning("grid: %s", exc)
        return Image.new("RGB", (size, size), (200, 200, 200))
    img = img.copy()
    img.thumbnail((size, size))
    return img


def save_result_grid(
    results: Sequence[QueryResult],
    out_path: str | Path,
    thumb_size: int = 160,
    mark_hits: bool = True,
) -> Path:
    """Draw one row per query: the query, then its hits with rank, score and category.

    When a query's category is known and ``mark_hits`` is set, each hit gets a green (same category)
    or red (other category) frame, as in the result figures of the original study.
    Returns ``out_path`` (PNG, written atomically).
    """
    if not results:
        raise UsageError("save_result_grid needs at least one query")
    if thumb_size < 16:
        raise UsageError(f"thumb_size must be at least 16 pixels, got {thumb_size}")
    font = _font(thumb_size)
    cell_w, cell_h = cell_size(thumb_size)
    n_cols = 1 + max(len(r.hits) for r in results)
    sheet = Image.new("RGB", (n_cols * cell_w, len(results) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for row, result in enumerate(results):
        top = row * cell_h
        title = result.title or "query"
        _cell(sheet, draw, font, (0, top), thumb_size, _thumbnail(result.image, thumb_size),
              [title, result.category or ""], "black", bold=True)
        for col, hit in enumerate(result.hits, start=1):
            colour = "black"
            if mark_hits and result.category is not None:
                colour = HIT_COLOUR if hit.record.category == result.category else MISS_COLOUR
            _cell(sheet, draw, font, (col * cell_w, top), thumb_size, _thumbnail(hit.record.path, thumb_size),
                  [f"#{hit.rank}  {hit.score:.3f}", hit.record.category or ""], colour,
                  frame=colour != "black")
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG")
    return out_path


def _font(thumb_size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(10, thumb_size // 12))


def cell_size(thumb_size: int) -> tuple[int, int]:
    """Width and height of one picture's cell in the grid: the picture, its margin and two caption lines."""
    line = _font(thumb_size).size + 4
    return thumb_size + 2 * PAD, thumb_size + 2 * PAD + 2 * line


def _cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
          origin: tuple[int, int], size: int, image: Image.Image, caption: list[str], colour: str,
          frame: bool = False, bold: bool = False) -> None:
    """One picture, centred in its square, with two caption lines above it and an optional frame."""
    left, top = origin
    line = getattr(font, "size", 10) + 4
    for i, text in enumerate(caption):
        width = draw.textlength(text, font=font)
        x = left + PAD + (size - width) / 2
        draw.text((x, top + PAD + i * line), text, fill=colour, font=font,
                  stroke_width=1 if bold else 0, stroke_fill=colour)
    box_top = top + PAD + 2 * line
    x = left + PAD + (size - image.width) // 2
    y = box_top + (size - image.height) // 2
    sheet.paste(image, (x, y))
    if frame:
        draw.rectangle((x - 3, y - 3, x + image.width + 2, y + image.height + 2), outline=colour, width=3)
