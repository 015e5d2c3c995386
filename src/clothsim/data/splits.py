"""Category counts, minimum-count filtering and a per-category (stratified) train/test split."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from clothsim.data.records import CatalogRecord
from clothsim.errors import UsageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitResult:
    """Outcome of :func:`balanced_split`.

    Attributes:
        records: The input records, in input order, each with ``split`` set to ``train`` or ``test``.
        unsplittable: Categories with fewer than two images (category -> count); they are all in train.
    """

    records: list[CatalogRecord]
    unsplittable: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FilterResult:
    """Outcome of :func:`filter_min_count`.

    Attributes:
        records: The records of the categories that were kept, in input order.
        dropped: Categories below the minimum (category -> count).
    """

    records: list[CatalogRecord]
    dropped: dict[str, int] = field(default_factory=dict)


def category_counts(records: Iterable[CatalogRecord]) -> dict[str | None, int]:
    """Images per category, largest first (ties by name); ``None`` counts the images without one."""
    counts = Counter(r.category for r in records)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] is not None, kv[0] or "")))


def filter_min_count(records: Sequence[CatalogRecord], min_count: int = 100) -> FilterResult:
    """Keep only categories with at least ``min_count`` images.

    Args:
        records: Catalogue records.
        min_count: Minimum images a category needs to be kept (>= 1).

    Returns:
        The kept records and the dropped categories with their counts.

    Raises:
        ValueError: ``min_count`` is below 1.
    """
    if min_count < 1:
        raise UsageError(f"min_count must be at least 1, got {min_count}")
    counts = category_counts(records)
    # Images without a category are no category: they are kept whatever their number.
    dropped = {c: n for c, n in counts.items() if n < min_count and c is not None}
    if dropped:
        logger.info("dropped %d categories with fewer than %d images: %s", len(dropped), min_count, dropped)
    return FilterResult(records=[r for r in records if r.category not in dropped], dropped=dropped)


def balanced_split(records: Sequence[CatalogRecord], test_fraction: float = 0.2, seed: int = 0) -> SplitResult:
    """Split every category into train and test by the same fraction.

    Each category with at least two images gets ``round(n * test_fraction)`` test images, clamped so
    that it keeps at least one test and one train image. Categories with a single image cannot be
    split; they stay in train and are reported in :attr:`SplitResult.unsplittable`.

    The choice within a category depends only on the seed, the category name and its image paths,
    not on input order or on the other categories, so adding a category leaves the rest unchanged.
    Existing ``split`` values are overwritten.

    Args:
        records: Catalogue records.
        test_fraction: Share of each category to put in test, strictly between 0 and 1.
        seed: Random seed.

    Returns:
        Records with ``split`` set, in input order, and the unsplittable categories.

    Raises:
        ValueError: ``test_fraction`` is not strictly between 0 and 1.
    """
    if not 0.0 < test_fraction < 1.0:
        raise UsageError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    by_category: dict[str | None, list[int]] = {}
    for index, record in enumerate(records):
        by_category.setdefault(record.category, []).append(index)

    test_rows: set[int] = set()
    unsplittable: dict[str | None, int] = {}
    # Images without a category are split as one group of their own.
    for category, rows in sorted(by_category.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
        if len(rows) < 2:
            unsplittable[category] = len(rows)
            continue
        n_test = min(max(round(len(rows) * test_fraction), 1), len(rows) - 1)
        # Sort before shuffling so the outcome does not depend on the input order.
        ordered = sorted(rows, key=lambda i: (records[i].path, records[i].item_id or "", i))
        random.Random(f"{seed}:{category}").shuffle(ordered)
        test_rows.update(ordered[:n_test])
    if unsplittable:
        logger.warning(
            "%d categories have fewer than 2 images and stay in train only: %s", len(unsplittable), unsplittable
        )
    out = [replace(r, split="test" if i in test_rows else "train") for i, r in enumerate(records)]
    return SplitResult(records=out, unsplittable=unsplittable)
