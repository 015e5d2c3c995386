from __future__ import annotations

import numpy as np
import pytest

from clothsim.data.records import CatalogRecord
from clothsim.encoders.base import l2_normalize
from clothsim.features.store import FeatureStore
from clothsim.index.base import IndexBackend
from clothsim.index import ExactIndex, open_index

DIM = 16
CATS = ["dress", "hat", "shoes"]


def _store(tmp_path, n=250, seed=0, segments=(100, 150)):
    rng = np.random.default_rng(seed)
    vectors = l2_normalize(rng.normal(size=(n, DIM)))
    store = FeatureStore.create(tmp_path / "s", {"encoder": "t", "weights": "w", "dim": DIM, "preprocessing": None})
    records = [CatalogRecord(f"{i}.jpg", CATS[i % 3]) for i in range(n)]
    lo = 0
    for size in segments:
        store.append(vectors[lo : lo + size], records[lo : lo + size])
        lo += size
    return store, vectors, records


def _brute_force(queries, vectors, ids, k):
    """Reference: score every pair, order by (-score, id) with Python's sort."""
    out = []
    for q in queries:
        pairs = sorted(((-float(np.dot(q, v)), int(i)) for v, i in zip(vectors, ids)))
        out.append([(i, -s) for s, i in pairs[:k]])
    return out


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 10_000])
def test_matches_brute_force_for_any_chunk_size(tmp_path, chunk_rows):
    store, vectors, _ = _store(tmp_path)
    queries = l2_normalize(np.random.default_rng(1).normal(size=(9, DIM)))
    hits = ExactIndex(store, chunk_rows=chunk_rows).search(queries, k=10)
    ref = _brute_force(queries, vectors, range(len(vectors)), 10)
    for got, want in zip(hits, ref):
        assert [h.id for h in got] == [i for i, _ in want]
        np.testing.assert_allclose([h.score for h in got], [s for _, s in want], rtol=1e-5, atol=1e-6)
        assert [h.rank for h in got] == list(range(1, 11))


def test_ties_break_by_lower_id_and_k_beyond_catalogue(tmp_path):
    store = FeatureStore.create(tmp_path / "s", {"encoder": "t", "weights": "w", "dim": 2, "preprocessing": None})
    same = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 2, dtype=np.float32)
    store.append(same, [CatalogRecord(f"{i}.jpg", "x") for i in range(7)])
    hits = ExactIndex(store, chunk_rows=3).search(np.array([[1.0, 0.0]]), k=50)[0]
    assert [h.id for h in hits] == [0, 1, 2, 3, 4, 5, 6]
    assert len(hits) == 7


def test_category_filter_returns_only_that_category(tmp_path):
    store, vectors, records = _store(tmp_path)
    queries = vectors[:3]
    hits = ExactIndex(store, chunk_rows=32).search(queries, k=5, category="hat")
    mask = np.array([r.category == "hat" for r in records])
    ref = _brute_force(queries, vectors[mask], np.flatnonzero(mask), 5)
    for got, want in zip(hits, ref):
        assert all(h.record.category == "hat" for h in got)
        assert [h.id for h in got] == [i for i, _ in want]
    two = ExactIndex(store).search(queries, k=20, category=["hat", "shoes"])
    assert {h.record.category for row in two for h in row} <= {"hat", "shoes"}
    with pytest.raises(ValueError, match="unknown category"):
        ExactIndex(store).search(queries, k=5, category="gloves")


def test_add_and_delete_change_results_without_rebuild(tmp_path):
    store, vectors, _ = _store(tmp_path)
    index = ExactIndex(store, chunk_rows=40)
    query = vectors[10:11]
    assert index.search(query, k=1)[0][0].id == 10
    index.delete([10])
    top = index.search(query, k=3)[0]
    assert 10 not in [h.id for h in top] and len(index) == 249
    new_id = index.add(query, [CatalogRecord("new.jpg", "dress")])[0]
    assert new_id == 250
    assert index.search(query, k=1)[0][0].record.path == "new.jpg"
    # A fresh index over the reopened store sees the same state.
    again = ExactIndex(FeatureStore.open(tmp_path / "s"))
    assert again.search(query, k=1)[0][0].id == 250 and len(again) == 250


def test_exclude_ids_leaves_the_query_item_out(tmp_path):
    store, vectors, _ = _store(tmp_path)
    hits = ExactIndex(store, chunk_rows=33).search(vectors[[5, 120]], k=4, exclude_ids=[5, 120])
    assert 5 not in [h.id for h in hits[0]] and 120 not in [h.id for h in hits[1]]
    ref = _brute_force(vectors[[5]], np.delete(vectors, 5, axis=0), np.delete(np.arange(250), 5), 4)[0]
    assert [h.id for h in hits[0]] == [i for i, _ in ref]


def test_dimension_mismatch_and_backend_interface(tmp_path):
    store, _, _ = _store(tmp_path)
    index = open_index(store, "exact")
    assert isinstance(index, IndexBackend)
    with pytest.raises(ValueError, match="dim"):
        index.search(np.ones((1, DIM + 1)), k=3)
    with pytest.raises(ValueError, match="known"):
        open_index(store, "annoy")


def test_optional_plugin_hooks_are_asked_for_through_their_protocols(tmp_path):
    from clothsim.errors import UsageError
    from clothsim.index.base import (
        IndexBackendPlugin,
        check_plugin_options,
        check_plugin_reachable,
        saves_files,
    )
    from clothsim.index.exact import ExactBackend

    class Bare:  # a third-party plug-in with none of the optional hooks
        description = "bare"

        def build(self, store, **options):
            return ExactBackend().build(store, **options)

        def open(self, store, **options):
            return ExactBackend().open(store, **options)

    class Picky(Bare):
        def check_options(self, options):
            if options:
                raise UsageError(f"picky has no option {sorted(options)}")
            return {}

        def check_reachable(self, options):
            raise UsageError("picky's server is down")

    assert isinstance(Bare(), IndexBackendPlugin) and isinstance(Picky(), IndexBackendPlugin)
    check_plugin_options(Bare(), {"anything": 1})
    check_plugin_reachable(Bare(), {})
    check_plugin_options(Picky(), {})
    with pytest.raises(UsageError, match="no option"):
        check_plugin_options(Picky(), {"x": 1})
    with pytest.raises(UsageError, match="down"):
        check_plugin_reachable(Picky(), {})
    assert saves_files(Bare()) and not saves_files(ExactBackend())


def test_check_backends_asks_the_plugin_whether_it_saves_files(tmp_path):
    from clothsim.index.exact import ExactBackend
    from clothsim.index.registry import backend_registry, check_backends

    store = FeatureStore.create(tmp_path / "s", {"encoder": "e", "weights": "w", "dim": 4, "preprocessing": None})
    store.commit(index_backend="store-only-test")
    backend_registry.register("store-only-test", ExactBackend())
    try:
        assert check_backends(store) == []  # nothing saved beside the store: nothing to check
    finally:
        backend_registry.unregister("store-only-test")
    [unknown] = check_backends(store)  # no plug-in to ask: reported, not silently skipped
    assert unknown.name == "store-only-test" and not unknown.checked and "not checked" in unknown.note
