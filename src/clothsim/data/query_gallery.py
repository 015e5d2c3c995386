"""Which images are queries and which are the gallery, and which queries a result grid shows.

The demo and the encoder comparison report both use these rules, so their figures are measured the same
way. Only the standard library is imported here: the module is cheap for any caller.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from clothsim.data.records import CatalogRecord

#: ``(query split, gallery split)`` pairs, most preferred first.
PROTOCOLS: tuple[tuple[str, str], ...] = (("test", "train"), ("query", "gallery"), ("validation", "train"))


def choose_protocol(records: Sequence[CatalogRecord]) -> tuple[str | None, str | None]:
    """The first pair of :data:`PROTOCOLS` whose two splits both occur in ``records``.

    Args:
        records: The catalogue.

    Returns:
        ``(query split, gallery split)``, or ``(None, None)`` when no pair is present (the caller then
        chooses its own fallback: leave-one-out for the report, a balanced split for the demo).
    """
    present = {r.split for r in records}
    for query, gallery in PROTOCOLS:
        if query in present and gallery in present:
            return query, gallery
    return None, None


def pick_grid_queries(queries: Sequence[CatalogRecord], n: int, seed: int = 0) -> list[int]:
    """Positions in ``queries`` of ``n`` seeded picks spread over the categories.

    The categories are put in a seeded random order and visited in turn, one pick each per round, so a
    grid shows as many categories as it has rows; categories run out one by one when ``n`` is larger.
    The same queries and seed always give the same picks.

    Args:
        queries: The query records.
        n: How many to pick (fewer come back when there are fewer queries).
        seed: Seed of the draw.

    Returns:
        Distinct indices into ``queries``, in pick order.

    Raises:
        ValueError: ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    by_category: dict[str, list[int]] = {}
    for position, record in enumerate(queries):
        by_category.setdefault(record.category, []).append(position)
    categories = sorted(by_category)
    rng.shuffle(categories)
    picks: list[int] = []
    taken: set[int] = set()
    while len(picks) < n and len(taken) < len(queries):
        for category in categories:
            if len(picks) >= n:
                break
            pool = [p for p in by_category[category] if p not in taken]
            if pool:
                choice = rng.choice(pool)
                picks.append(choice)
                taken.add(choice)
    return picks
