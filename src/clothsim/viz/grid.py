"""The result grid: each query beside its top-k with scores and categories, hits and misses marked."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# A bare Figure (no pyplot): no global backend switch, no window, nothing to close, thread-safe.
from matplotlib.figure import Figure
from PIL import Image

from clothsim.errors import UsageError
from clothsim.fileio import atomic_path
from clothsim.images import UNUSABLE_IMAGE_ERRORS, load_image
from clothsim.index.base import SearchHit

logger = logging.getLogger(__name__)

HIT_COLOUR = "#1a9850"
MISS_COLOUR = "#d73027"


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
    n_cols = 1 + max(len(r.hits) for r in results)
    cell = thumb_size / 80  # inches per cell at 80 dpi, plus room for the caption
    fig = Figure(figsize=(n_cols * cell, len(results) * cell * 1.25), dpi=80)
    axes = fig.subplots(len(results), n_cols, squeeze=False)
    for row, result in enumerate(results):
        for col in range(n_cols):
            axes[row][col].axis("off")
        ax = axes[row][0]
        ax.imshow(_thumbnail(result.image, thumb_size))
        ax.set_title(result.title or f"query\n{result.category or ''}", fontsize=9, fontweight="bold")
        for col, hit in enumerate(result.hits, start=1):
            ax = axes[row][col]
            ax.imshow(_thumbnail(hit.record.path, thumb_size))
            colour = "black"
            if mark_hits and result.category is not None:
                colour = HIT_COLOUR if hit.record.category == result.category else MISS_COLOUR
                ax.axis("on")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(3)
            ax.set_title(f"#{hit.rank}  {hit.score:.3f}\n{hit.record.category}", fontsize=8, color=colour)
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    return out_path
