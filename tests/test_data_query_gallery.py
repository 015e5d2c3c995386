"""The query/gallery rule and the grid's query sampling, shared by the demo and the comparison report."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from clothsim.data.query_gallery import PROTOCOLS, choose_protocol, pick_grid_queries
from clothsim.data.records import CatalogRecord


def records(spec: dict[str, int], split: str | None = None) -> list[CatalogRecord]:
    return [CatalogRecord(f"/img/{split}/{category}/{i}.jpg", category, split)
            for category, n in spec.items() for i in range(n)]


def with_splits(*splits: str | None) -> list[CatalogRecord]:
    return [CatalogRecord(f"/img/{i}.jpg", "dress", split) for i, split in enumerate(splits)]


@pytest.mark.parametrize("splits, expected", [
    (("train", "test", "validation"), ("test", "train")),
    (("gallery", "query", "train"), ("query", "gallery")),
    (("train", "validation"), ("validation", "train")),
    (("query", "gallery", "validation", "train"), ("query", "gallery")),
    (("train",), (None, None)),
    (("test", "validation"), (None, None)),
    ((None, None), (None, None)),
    ((), (None, None)),
])
def test_choose_protocol_takes_the_first_pair_present(splits, expected):
    assert choose_protocol(with_splits(*splits)) == expected


def test_protocols_pair_a_query_split_with_a_gallery_split():
    assert PROTOCOLS[0] == ("test", "train")
    assert all(query != gallery for query, gallery in PROTOCOLS)


def test_the_report_and_the_demo_use_the_same_rule():
    from clothsim.demo import split_for_demo
    from clothsim.evaluation import runner

    assert runner.choose_protocol is choose_protocol and runner.PROTOCOLS is PROTOCOLS
    recs = with_splits("train", "train", "validation", "test", "query")
    gallery, queries = split_for_demo(recs)
    assert {r.split for r in gallery} == {"train"} and {r.split for r in queries} == {"test"}


def test_demo_falls_back_to_a_balanced_split_without_splits():
    from clothsim.demo import split_for_demo

    recs = records({"dress": 10, "hat": 5})
    gallery, queries = split_for_demo(recs, seed=3)
    assert len(gallery) + len(queries) == 15
    assert {r.category for r in queries} == {"dress", "hat"}
    assert not {r.path for r in gallery} & {r.path for r in queries}
    assert split_for_demo(recs, seed=3) == (gallery, queries)


def test_picks_cover_as_many_categories_as_rows():
    queries = records({"dress": 7, "hat": 2, "pants": 4, "shoes": 1, "skirt": 3, "shirt": 5})
    picks = pick_grid_queries(queries, 4, seed=1)
    assert len(picks) == 4
    assert len({queries[i].category for i in picks}) == 4


def test_picks_are_seeded_distinct_and_run_categories_dry():
    queries = records({"dress": 5, "hat": 1, "pants": 2})
    assert pick_grid_queries(queries, 6, seed=0) == pick_grid_queries(queries, 6, seed=0)
    every = pick_grid_queries(queries, 100, seed=0)
    assert sorted(every) == list(range(len(queries)))
    # Round-robin: the first three picks are one of each category, the only hat goes in round one.
    assert {queries[i].category for i in every[:3]} == {"dress", "hat", "pants"}
    assert [queries[i].category for i in every[3:]].count("hat") == 0
    assert len({tuple(pick_grid_queries(queries, 3, seed=s)) for s in range(10)}) > 1  # the seed matters


def test_picks_edge_cases():
    queries = records({"dress": 3})
    assert pick_grid_queries([], 5) == []
    assert pick_grid_queries(queries, 0) == []
    with pytest.raises(ValueError, match="n must be"):
        pick_grid_queries(queries, -1)


def _reference_picks(queries: list[CatalogRecord], n: int, seed: int) -> list[str]:
    """The report's grid sampling as it was before it moved here, kept to prove the picks did not change."""
    rng = random.Random(seed)
    by_category: dict[str, list[CatalogRecord]] = {}
    for record in queries:
        by_category.setdefault(record.category, []).append(record)
    categories = sorted(by_category)
    rng.shuffle(categories)
    picks: list[str] = []
    while len(picks) < n and any(by_category.values()):
        for category in categories:
            pool = [r for r in by_category[category] if r.path not in picks]
            if pool and len(picks) < n:
                picks.append(rng.choice(pool).path)
            by_category[category] = pool
    return picks


@pytest.mark.parametrize("n", [0, 1, 3, 6, 11, 40])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_report_grid_queries_are_unchanged_by_the_move(n, seed):
    from clothsim.evaluation.runner import _pick_grid_queries

    queries = records({"t-shirt": 9, "hat": 2, "dress": 4, "shoes": 6, "skirt": 1}, split="test")
    assert _pick_grid_queries(queries, n, seed) == _reference_picks(queries, n, seed)


def test_protocol_module_is_light():
    code = ("import sys, clothsim.data.query_gallery; "
            "print(','.join(m for m in ('torch', 'matplotlib', 'clothsim.evaluation', 'clothsim.demo') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
