"""Seeded sampling of training pairs: same category -> similar (1), different -> dissimilar (0).

Each item is the anchor of one positive pair (another item of its category) and of
``negative_ratio`` negative pairs on average (items of other categories), so the negatives are exactly
``round(negative_ratio * n_positive)``. Items never pair with themselves. With
``rule="category+attributes"``, a positive must also share at least one attribute with its anchor, and
every pair that is not positive under that rule may be drawn as a negative (same category without a
shared attribute included).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from clothsim.errors import DataError, UsageError

RULES = ("category", "category+attributes")


@dataclass(frozen=True)
class PairSet:
    """Pairs of row indices with their targets, aligned.

    Attributes:
        left: ``(P,)`` int64 row of the first item.
        right: ``(P,)`` int64 row of the second item.
        target: ``(P,)`` float32, 1.0 for a similar pair, 0.0 for a dissimilar one.
    """

    left: np.ndarray
    right: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return int(self.left.shape[0])

    @property
    def n_positive(self) -> int:
        return int(self.target.sum())


def _as_generator(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def make_pairs(
    labels: Sequence[Hashable],
    *,
    negative_ratio: float = 1.0,
    seed: int | np.random.Generator = 0,
    attributes: Sequence[Sequence[Hashable]] | None = None,
    rule: str = "category",
) -> PairSet:
    """Draw one positive pair per anchor and ``negative_ratio`` negatives per positive, shuffled.

    Args:
        labels: Category of each item.
        negative_ratio: Negatives per positive pair (>= 0; fractions are fine).
        seed: Seed or generator; the same seed gives the same pairs.
        attributes: Attributes of each item, needed for ``rule="category+attributes"``.
        rule: ``"category"`` or ``"category+attributes"`` (see the module docstring).

    Returns:
        The pairs in random order. Anchors without any possible partner (the only item of its
        category, or without a shared attribute) get no positive.

    Raises:
        ValueError: bad ratio or rule, attributes missing or misaligned, fewer than two categories.
    """
    if rule not in RULES:
        raise UsageError(f"rule must be one of {RULES}, got {rule!r}")
    if not negative_ratio >= 0:
        raise UsageError(f"negative_ratio must be >= 0, got {negative_ratio}")
    n = len(labels)
    if rule == "category+attributes":
        if attributes is None:
            raise ValueError("rule='category+attributes' needs the items' attributes")
        if len(attributes) != n:
            raise ValueError(f"attributes has {len(attributes)} rows for {n} labels")
    rng = _as_generator(seed)
    codes = _encode(labels)
    if len(np.unique(codes)) < 2:
        raise DataError("pairs need at least two categories (negatives come from other categories)")

    groups = _positive_groups(codes, attributes if rule == "category+attributes" else None)
    left: list[int] = []
    right: list[int] = []
    for anchor in range(n):
        candidates = groups[anchor]
        if not candidates:
            continue
        # Draw a group first (one per shared attribute) then a member: cheap and never the anchor.
        members = candidates[int(rng.integers(len(candidates)))]
        pick = int(rng.integers(len(members) - 1))
        # Uniform over the other members: a draw landing on the anchor takes the last member instead.
        partner = members[pick] if members[pick] != anchor else members[-1]
        left.append(anchor)
        right.append(int(partner))
    n_pos = len(left)

    n_neg = round(negative_ratio * n_pos)
    neg_left, neg_right = _negatives(codes, attributes if rule == "category+attributes" else None, n_neg, rng)
    all_left = np.asarray(left + neg_left, dtype=np.int64)
    all_right = np.asarray(right + neg_right, dtype=np.int64)
    target = np.concatenate([np.ones(n_pos, np.float32), np.zeros(len(neg_left), np.float32)])
    order = rng.permutation(len(target))
    return PairSet(all_left[order], all_right[order], target[order])


def _encode(labels: Sequence[Hashable]) -> np.ndarray:
    index: dict[Hashable, int] = {}
    return np.asarray([index.setdefault(label, len(index)) for label in labels], dtype=np.int64)


def _positive_groups(codes: np.ndarray, attributes: Sequence[Sequence[Hashable]] | None) -> list[list[list[int]]]:
    """For each item, the groups (of >= 2 members, itself included) its positive partner comes from."""
    buckets: dict[tuple, list[int]] = defaultdict(list)
    keys: list[list[tuple]] = []
    for i, code in enumerate(codes.tolist()):
        item_keys = [(code,)] if attributes is None else [(code, a) for a in sorted(set(attributes[i]), key=str)]
        keys.append(item_keys)
        for key in item_keys:
            buckets[key].append(i)
    return [[buckets[key] for key in item_keys if len(buckets[key]) > 1] for item_keys in keys]


def _negatives(
    codes: np.ndarray,
    attributes: Sequence[Sequence[Hashable]] | None,
    count: int,
    rng: np.random.Generator,
) -> tuple[list[int], list[int]]:
    n = len(codes)
    attr_sets = None if attributes is None else [frozenset(a) for a in attributes]
    left: list[int] = []
    right: list[int] = []
    while len(left) < count:
        # Vectorised rejection sampling: draw a batch, keep the pairs that are really negative.
        need = count - len(left)
        a = rng.integers(n, size=2 * need + 16)
        b = rng.integers(n, size=2 * need + 16)
        for i, j in zip(a.tolist(), b.tolist()):
            if i == j:
                continue
            negative = codes[i] != codes[j] or (attr_sets is not None and not (attr_sets[i] & attr_sets[j]))
            if negative:
                left.append(i)
                right.append(j)
                if len(left) == count:
                    break
    return left, right
