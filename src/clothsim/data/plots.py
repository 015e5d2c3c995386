"""Bar chart of images per category, stacked by split."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from clothsim.data.records import SPLITS, CatalogRecord
from clothsim.errors import EmptyCatalogError
from clothsim.fileio import atomic_path

logger = logging.getLogger(__name__)

UNSET_SPLIT = "unset"
# Fixed colours per split so that charts of different catalogues read the same way.
_SPLIT_COLOURS = {
    "train": "#4C72B0",
    "validation": "#DD8452",
    "test": "#55A868",
    "query": "#C44E52",
    "gallery": "#8172B3",
    UNSET_SPLIT: "#8C8C8C",
}


#: The bar of the images without a category.
NO_CATEGORY = "(no category)"


def count_table(records: Sequence[CatalogRecord], by_split: bool = True) -> tuple[list[str], dict[str, list[int]]]:
    """Counts behind the chart.

    Args:
        records: Catalogue records.
        by_split: Whether to break counts down by split.

    Returns:
        ``(categories, counts)``: categories by descending total (ties by name), and per split (in
        the order of :data:`~clothsim.data.records.SPLITS`, then ``"unset"`` for records without a
        split) the count of each category. With ``by_split=False``, or when no record has a split,
        there is a single series named ``"all"``.
    """
    totals: dict[str, int] = {}
    for r in records:
        totals[r.category or NO_CATEGORY] = totals.get(r.category or NO_CATEGORY, 0) + 1
    categories = sorted(totals, key=lambda c: (-totals[c], c))
    if not by_split or all(r.split is None for r in records):
        return categories, {"all": [totals[c] for c in categories]}
    cells: dict[tuple[str, str], int] = {}
    for r in records:
        key = (r.split or UNSET_SPLIT, r.category or NO_CATEGORY)
        cells[key] = cells.get(key, 0) + 1
    present = {split for split, _ in cells}
    order = [s for s in (*SPLITS, UNSET_SPLIT) if s in present]
    order += sorted(present - set(order))  # splits outside the contract still get drawn
    return categories, {s: [cells.get((s, c), 0) for c in categories] for s in order}


def plot_category_distribution(
    records: Sequence[CatalogRecord],
    out_path: str | os.PathLike[str],
    title: str | None = None,
    by_split: bool = True,
) -> Path:
    """Save a horizontal bar chart of images per category as a PNG file.

    Bars are sorted by total count (largest on top), stacked by split when the records have splits,
    and labelled with their totals. The file is written to a temporary name and then renamed, so a
    reader never sees half a PNG.

    Args:
        records: Catalogue records.
        out_path: Destination ``.png`` path; parent folders are created.
        title: Chart title; defaults to a summary of the counts.
        by_split: Whether to stack the bars by split.

    Returns:
        The written path.

    Raises:
        EmptyCatalogError: ``records`` is empty.
    """
    if not records:
        raise EmptyCatalogError("no records to plot")
    from clothsim.optional import require

    # Figure without pyplot: no global state, no GUI backend, nothing to close.
    Figure = require("matplotlib.figure", feature="the category chart (--plot)").Figure

    categories, series = count_table(records, by_split)
    totals = [sum(values) for values in zip(*series.values(), strict=True)]
    height = max(3.0, 0.9 + 0.32 * len(categories))
    fig = Figure(figsize=(8.0, height), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    positions = list(range(len(categories)))
    left = [0] * len(categories)
    for name, values in series.items():
        ax.barh(positions, values, left=left, label=name, color=_SPLIT_COLOURS.get(name, None), height=0.75)
        left = [a + b for a, b in zip(left, values, strict=True)]
    for y, total in zip(positions, totals, strict=True):
        ax.annotate(f"{total:,}", (total, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(positions, labels=categories, fontsize=9 if len(categories) <= 30 else 7)
    ax.set_ylim(len(categories) - 0.5, -0.5)  # largest on top, no empty band above or below
    ax.set_xlabel("images")
    ax.set_xlim(0, max(totals) * 1.12)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    if len(series) > 1:
        # Bars are sorted, so the lower right corner holds the shortest ones.
        ax.legend(title="split", loc="lower right", fontsize=8)
    ax.set_title(title or f"{len(records):,} images in {len(categories)} categories")

    out = Path(out_path).expanduser()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    logger.info("wrote category distribution of %d images to %s", len(records), out)
    return out
