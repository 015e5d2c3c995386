"""The exact-search kernel (clothsim.index.topk.scan_topk) against a naive per-row reference.

Sizes that do not divide into tiles, masks that keep many or few rows (the gather path), exclusions,
float32 and float16 galleries, the half-precision first pass for one float16 query, exact ties.
"""

from __future__ import annotations

import numpy as np
import pytest

from clothsim.index import topk
from clothsim.index.topk import ScanPart, ScoreRangeError, scan_topk


def reference(queries, parts, k, exclude=None):
    """Score every eligible row in float64 and sort by (-score, id) with Python's sort."""
    out = []
    for qi, q in enumerate(queries):
        rows = []
        for part in parts:
            for j, vec in enumerate(np.asarray(part.vectors, dtype=np.float64)):
                idx = part.id_start + j
                if (part.keep is None or part.keep[j]) and (exclude is None or exclude[qi] != idx):
                    rows.append((-float(vec @ q), idx))
        out.append(sorted(rows)[:k])
    width = min(len(r) for r in out)
    return [[i for _, i in r[:width]] for r in out], [[-s for s, _ in r[:width]] for r in out]


def unit(rng, n, d, dtype=np.float32):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("torch_loaded", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("n_queries", [1, 3])
@pytest.mark.parametrize("keep_fraction", [1.0, 0.6, 0.05])
def test_matches_the_naive_reference(dtype, n_queries, keep_fraction, torch_loaded, monkeypatch):
    if not torch_loaded:  # the core's own path: search never imports torch
        monkeypatch.setattr(topk, "_loaded_torch", lambda: None)
    rng = np.random.default_rng(int(keep_fraction * 100) + n_queries)
    vectors = unit(rng, 517, 24, dtype)
    keep = rng.random(517) < keep_fraction
    parts = [ScanPart(10, vectors[:200], keep[:200]), ScanPart(300, vectors[200:], keep[200:])]
    queries = unit(rng, n_queries, 24)
    exclude = np.array([300 + 5] + [10 + 7] * (n_queries - 1))
    for tile in (1, 33, 4096):
        ids, scores = scan_topk(queries, parts, 9, exclude=exclude, tile_rows=tile)
        want_ids, want_scores = reference(queries, parts, 9, exclude)
        np.testing.assert_allclose(scores, want_scores, atol=2e-6)
        assert ids.tolist() == want_ids


def test_exact_ties_go_to_the_lower_id_whatever_the_tiling():
    base = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    vectors = base[np.random.default_rng(0).integers(0, 3, 200)]
    query = np.array([[0.6, 0.8]], dtype=np.float32)
    want = [i for i in range(200) if np.array_equal(vectors[i], base[1])][:15]
    for tile in (1, 7, 64, 1000):
        ids, scores = scan_topk(query, [ScanPart(0, vectors)], 15, tile_rows=tile)
        assert ids[0].tolist() == want and np.all(scores == 1.0)


def test_k_beyond_the_eligible_rows_returns_them_all():
    rng = np.random.default_rng(1)
    vectors = unit(rng, 10, 8)
    keep = np.zeros(10, dtype=bool)
    keep[[2, 7]] = True
    ids, _ = scan_topk(vectors[:2], [ScanPart(0, vectors, keep)], 50)
    assert sorted(ids[0].tolist()) == [2, 7] and ids.shape == (2, 2)
    ids, _ = scan_topk(vectors[:1], [ScanPart(0, vectors, np.zeros(10, dtype=bool))], 5)
    assert ids.shape == (1, 0)


def test_the_half_precision_pass_for_one_float16_query_is_exact():
    if not topk._half_pass_available():
        pytest.skip("torch's float16 product is not precise enough here; the exact path is used instead")
    rng = np.random.default_rng(2)
    vectors = unit(rng, 3000, 1280, np.float16)
    vectors[100:140] = vectors[50]  # a run of duplicates: many scores within the rescoring window
    query = vectors[50:51].astype(np.float32)
    keep = rng.random(3000) < 0.9
    parts = [ScanPart(0, vectors[:1700], keep[:1700]), ScanPart(1700, vectors[1700:], keep[1700:])]
    ids, scores = scan_topk(query, parts, 25, exclude=np.array([50]))
    exact = np.einsum("ij,j->i", vectors.astype(np.float64), query[0].astype(np.float64)).astype(np.float32)
    eligible = [i for i in range(3000) if keep[i] and i != 50]
    want = sorted(eligible, key=lambda i: (-exact[i], i))[:25]
    assert ids[0].tolist() == want
    np.testing.assert_allclose(scores[0], exact[want], atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, 1e30, -1e30])
def test_scores_no_unit_vector_can_give_are_refused_naming_the_part(bad):
    vectors = unit(np.random.default_rng(3), 50, 8)
    vectors[17] = bad
    with pytest.raises(ScoreRangeError, match="segment-7.npy"):
        scan_topk(vectors[:1], [ScanPart(0, vectors, label="segment-7.npy")], 3)


def test_arguments_are_checked():
    vectors = unit(np.random.default_rng(4), 5, 4)
    with pytest.raises(ValueError, match="k must be"):
        scan_topk(vectors[:1], [ScanPart(0, vectors)], 0)
    with pytest.raises(ValueError, match="dim"):
        scan_topk(np.ones((1, 3)), [ScanPart(0, vectors)], 1)
    with pytest.raises(ValueError, match="one id per query"):
        scan_topk(vectors[:2], [ScanPart(0, vectors)], 1, exclude=np.array([1]))
