"""Pair sampling: ratio, seeding, no self-pairs, positives really of one category."""

from __future__ import annotations

import numpy as np
import pytest

from clothsim.training.pairs import make_pairs

LABELS = ["a"] * 10 + ["b"] * 7 + ["c"] * 5 + ["d"]  # "d" has a single item: no positive for it


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0, 3.0])
def test_ratio_and_targets(ratio: float) -> None:
    pairs = make_pairs(LABELS, negative_ratio=ratio, seed=1)
    n_pos = pairs.n_positive
    assert n_pos == len(LABELS) - 1  # one per anchor, except the lone "d"
    assert len(pairs) - n_pos == round(ratio * n_pos)
    labels = np.asarray(LABELS)
    same = labels[pairs.left] == labels[pairs.right]
    assert np.all(same[pairs.target == 1])
    assert not np.any(same[pairs.target == 0])
    assert np.all(pairs.left != pairs.right)


def test_every_anchor_has_its_positive_and_partners_vary() -> None:
    pairs = make_pairs(LABELS, seed=0)
    anchors = pairs.left[pairs.target == 1]
    assert sorted(anchors.tolist()) == [i for i in range(len(LABELS)) if LABELS[i] != "d"]
    partners = {tuple(make_pairs(LABELS, seed=s).right[:3]) for s in range(5)}
    assert len(partners) > 1


def test_seeded() -> None:
    a = make_pairs(LABELS, negative_ratio=2.0, seed=7)
    b = make_pairs(LABELS, negative_ratio=2.0, seed=7)
    c = make_pairs(LABELS, negative_ratio=2.0, seed=8)
    for field in ("left", "right", "target"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.left, c.left)


def test_positive_partner_is_uniform_over_the_others() -> None:
    counts = np.zeros(3)
    for seed in range(300):
        pairs = make_pairs(["x", "x", "x", "y"], negative_ratio=0.0, seed=seed)
        counts[pairs.right[pairs.left == 0][0]] += 1
    assert counts[0] == 0
    assert 110 < counts[1] < 190 and 110 < counts[2] < 190


def test_attribute_rule() -> None:
    labels = ["top"] * 4 + ["skirt"] * 3
    attributes = [("red",), ("red", "long"), ("blue",), ("blue",), ("red",), ("red",), ("green",)]
    pairs = make_pairs(labels, negative_ratio=2.0, seed=0, attributes=attributes, rule="category+attributes")
    for i, j, y in zip(pairs.left, pairs.right, pairs.target):
        shares = bool(set(attributes[i]) & set(attributes[j]))
        assert (labels[i] == labels[j] and shares) == (y == 1), (i, j, y)
    assert pairs.n_positive == 6  # item 6 ("green" skirt) shares nothing within its category


@pytest.mark.parametrize("kwargs, match", [
    ({"negative_ratio": -1.0}, "negative_ratio"),
    ({"rule": "colour"}, "rule"),
    ({"rule": "category+attributes"}, "attributes"),
])
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_pairs(LABELS, **kwargs)


def test_needs_two_categories() -> None:
    with pytest.raises(ValueError, match="two categories"):
        make_pairs(["a", "a", "a"])
