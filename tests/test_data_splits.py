"""Tests for clothsim.data.splits."""

from __future__ import annotations

import logging
import random
from collections import Counter

import pytest

from clothsim.data.records import CatalogRecord
from clothsim.data.splits import balanced_split, category_counts, filter_min_count


def catalogue(sizes: dict[str, int], split: str | None = "validation") -> list[CatalogRecord]:
    return [
        CatalogRecord(path=f"/img/{c}/{i:03d}.jpg", category=c, split=split) for c, n in sizes.items() for i in range(n)
    ]


def test_category_counts_largest_first() -> None:
    counts = category_counts(catalogue({"b": 2, "a": 2, "c": 5}))
    assert list(counts.items()) == [("c", 5), ("a", 2), ("b", 2)]


def test_filter_min_count(caplog: pytest.LogCaptureFixture) -> None:
    records = catalogue({"big": 5, "edge": 3, "small": 2, "one": 1})
    with caplog.at_level(logging.INFO, logger="clothsim.data.splits"):
        result = filter_min_count(records, min_count=3)
    assert result.dropped == {"small": 2, "one": 1}
    assert result.records == [r for r in records if r.category in ("big", "edge")]
    assert "small" in caplog.text
    with pytest.raises(ValueError, match="min_count"):
        filter_min_count(records, min_count=0)


def test_balanced_split_proportions_and_minimums() -> None:
    sizes = {"many": 100, "odd": 7, "pair": 2, "three": 3}
    records = catalogue(sizes)
    result = balanced_split(records, test_fraction=0.2, seed=1)
    tests = Counter(r.category for r in result.records if r.split == "test")
    assert tests == {"many": 20, "odd": 1, "pair": 1, "three": 1}
    assert {r.split for r in result.records} == {"train", "test"}
    assert result.unsplittable == {}
    # A large fraction still leaves one training image per category.
    heavy = balanced_split(records, test_fraction=0.9, seed=1)
    trains = Counter(r.category for r in heavy.records if r.split == "train")
    assert trains == {"many": 10, "odd": 1, "pair": 1, "three": 1}


def test_single_image_categories_are_reported_and_kept(caplog: pytest.LogCaptureFixture) -> None:
    records = catalogue({"lonely": 1, "ok": 4})
    with caplog.at_level(logging.WARNING, logger="clothsim.data.splits"):
        result = balanced_split(records, test_fraction=0.5)
    assert result.unsplittable == {"lonely": 1}
    assert [r.split for r in result.records if r.category == "lonely"] == ["train"]
    assert len(result.records) == 5
    assert "lonely" in caplog.text


def test_records_keep_order_and_other_fields() -> None:
    records = [
        CatalogRecord(
            path=f"/p/{i}.jpg", category="c" if i % 2 else "d", item_id=f"id{i}", attributes=("x",), bbox=(0, 0, i, i)
        )
        for i in range(10)
    ]
    result = balanced_split(records, test_fraction=0.4, seed=0)
    for before, after in zip(records, result.records, strict=True):
        assert (after.path, after.category, after.item_id, after.attributes, after.bbox) == (
            before.path,
            before.category,
            before.item_id,
            before.attributes,
            before.bbox,
        )


def test_deterministic_and_independent_of_order_and_other_categories() -> None:
    records = catalogue({"a": 30, "b": 30})

    def paths_in_test_split(result_records: list[CatalogRecord]) -> set[str]:
        return {r.path for r in result_records if r.split == "test"}

    base = paths_in_test_split(balanced_split(records, seed=5).records)
    assert base == paths_in_test_split(balanced_split(records, seed=5).records)
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    assert paths_in_test_split(balanced_split(shuffled, seed=5).records) == base
    with_more = paths_in_test_split(balanced_split(records + catalogue({"c": 9}), seed=5).records)
    assert {p for p in with_more if "/c/" not in p} == base
    assert paths_in_test_split(balanced_split(records, seed=6).records) != base


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        balanced_split(catalogue({"a": 3}), test_fraction=fraction)
