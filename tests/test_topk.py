"""clothsim.index.topk against a brute-force reference (full score lists sorted in plain Python)."""

from __future__ import annotations

import numpy as np
import pytest

from clothsim.index.topk import iter_row_blocks, topk_cosine, topk_over_blocks


def brute_topk(queries, gallery, k, exclude=None):
    """Per query: every gallery row's score, sorted by (score desc, row asc), first k kept."""
    out_rows, out_scores = [], []
    for i, query in enumerate(np.asarray(queries, dtype=np.float64)):
        scored = []
        for j, item in enumerate(np.asarray(gallery, dtype=np.float64)):
            if exclude is not None and exclude[i] == j:
                continue
            scored.append((-float(np.dot(query, item)), j))
        scored.sort()
        out_rows.append([j for _, j in scored[:k]])
        out_scores.append([-s for s, _ in scored[:k]])
    return out_rows, out_scores


def quantised(rng, n, dim, levels=3):
    """Small-integer vectors: dot products are exact in float32, so ties are real ties."""
    return rng.integers(-(levels // 2), levels // 2 + 1, size=(n, dim)).astype(np.float32)


def unit(rng, n, dim):
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def assert_exact(result, reference):
    rows, scores = result
    ref_rows, ref_scores = reference
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    assert rows.tolist() == ref_rows
    np.testing.assert_array_equal(scores, np.array(ref_scores, dtype=np.float32).reshape(scores.shape))


@pytest.mark.parametrize(
    ("n_q", "n_g", "k", "chunk"),
    [(13, 50, 5, 7), (4, 9, 9, 4), (6, 8, 20, 3), (5, 64, 1, 64), (3, 31, 10, 1000), (7, 40, 39, 6)],
)
def test_random_unit_vectors_match_brute_force(n_q, n_g, k, chunk):
    rng = np.random.default_rng(n_q * 1000 + n_g)
    queries, gallery = unit(rng, n_q, 16), unit(rng, n_g, 16)
    rows, scores = topk_cosine(queries, gallery, k, chunk_rows=chunk)
    ref_rows, ref_scores = brute_topk(queries, gallery, k)
    assert rows.shape == (n_q, min(k, n_g))
    # Continuous data has no ties, so the order is unique up to float32 rounding.
    assert rows.tolist() == ref_rows
    np.testing.assert_allclose(scores, np.array(ref_scores), atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 16, 61, 1000])
@pytest.mark.parametrize("k", [1, 3, 8, 60, 61, 100])
def test_heavy_ties_break_to_lower_row_for_every_chunk_size(chunk, k):
    rng = np.random.default_rng(7)
    # 3 levels in 2 dims: only 9 distinct vectors among 61, so most scores tie.
    queries, gallery = quantised(rng, 11, 2), quantised(rng, 61, 2)
    assert_exact(topk_cosine(queries, gallery, k, chunk_rows=chunk), brute_topk(queries, gallery, k))


def test_duplicated_vectors_come_back_in_catalogue_order():
    rng = np.random.default_rng(3)
    base = quantised(rng, 5, 4, levels=5)
    # Each vector three times at scattered rows.
    gallery = np.concatenate([base, base[::-1], base])
    rows, scores = topk_cosine(base, gallery, 7, chunk_rows=4)
    assert_exact((rows, scores), brute_topk(base, gallery, 7))
    for i in range(len(base)):
        same = scores[i][1:] == scores[i][:-1]
        assert same.any()  # the copies do tie
        assert (rows[i][1:][same] > rows[i][:-1][same]).all()


def test_tie_straddling_the_kth_place_inside_one_block():
    gallery = np.array([[0.5], [1.0], [1.0], [1.0], [1.0], [0.2], [1.0]], dtype=np.float32)
    rows, scores = topk_cosine(np.ones((2, 1), np.float32), gallery, 3, chunk_rows=7)
    assert rows.tolist() == [[1, 2, 3], [1, 2, 3]]
    assert scores.tolist() == [[1.0, 1.0, 1.0]] * 2


@pytest.mark.parametrize("chunk", [1, 3, 7, 50])
@pytest.mark.parametrize("k", [1, 4, 23, 24, 40])
def test_leave_one_out_matches_brute_force_and_never_returns_self(chunk, k):
    rng = np.random.default_rng(11)
    data = quantised(rng, 24, 2)
    data[5] = data[17]  # an exact duplicate elsewhere must still be retrievable
    rows, scores = topk_cosine(data, data, k, chunk_rows=chunk, leave_one_out=True)
    assert rows.shape == (24, min(k, 23))
    assert not (rows == np.arange(24)[:, None]).any()
    assert 17 in rows[5].tolist()[: max(1, min(k, 23))] or k < 23
    assert_exact((rows, scores), brute_topk(data, data, k, exclude=np.arange(24)))


def test_leave_one_out_with_a_single_row_returns_no_neighbour():
    rows, scores = topk_cosine(np.ones((1, 3), np.float32), np.ones((1, 3), np.float32), 5, leave_one_out=True)
    assert rows.shape == (1, 0) and scores.shape == (1, 0)


def test_exclude_mixed_with_no_exclusion_on_a_large_gallery():
    rng = np.random.default_rng(5)
    queries, gallery = quantised(rng, 6, 3), quantised(rng, 30, 3)
    exclude = np.array([0, -1, 29, -1, 12, 12])
    rows, scores = topk_over_blocks(queries, iter_row_blocks(gallery, 8), 5, exclude=exclude)
    assert_exact((rows, scores), brute_topk(queries, gallery, 5, exclude=exclude))


def test_exclude_on_a_gallery_no_larger_than_k_keeps_a_rectangular_prefix():
    # Documented: when some query excludes a row and the gallery has at most k rows, every query
    # gets n - 1 columns; queries that excluded nothing lose only their last neighbour.
    rng = np.random.default_rng(6)
    queries, gallery = quantised(rng, 3, 3), quantised(rng, 5, 3)
    exclude = np.array([2, -1, 4])
    rows, scores = topk_over_blocks(queries, iter_row_blocks(gallery, 2), 8, exclude=exclude)
    ref_rows, ref_scores = brute_topk(queries, gallery, 8, exclude=exclude)
    assert rows.shape == (3, 4)
    assert rows.tolist() == [r[:4] for r in ref_rows]
    assert np.isfinite(scores).all()


def test_empty_blocks_and_shuffled_block_order_change_nothing():
    rng = np.random.default_rng(9)
    queries, gallery = quantised(rng, 7, 2), quantised(rng, 40, 2)
    empty = np.zeros((0, 2), np.float32)
    blocks = [(0, empty), (0, gallery[:13]), (13, empty), (13, gallery[13:14]), (14, gallery[14:40]), (40, empty)]
    reference = brute_topk(queries, gallery, 9)
    assert_exact(topk_over_blocks(queries, iter(blocks), 9), reference)
    # The merge sorts on (score, global row), so the tie rule holds whatever order blocks arrive in.
    assert_exact(topk_over_blocks(queries, iter(blocks[::-1]), 9), reference)


def test_no_blocks_or_no_queries_give_empty_results():
    rows, scores = topk_over_blocks(np.ones((3, 2)), iter([]), 4)
    assert rows.shape == (3, 0) and scores.shape == (3, 0)
    rows, scores = topk_cosine(np.zeros((0, 2), np.float32), np.ones((5, 2), np.float32), 3)
    assert rows.shape == (0, 3) and scores.shape == (0, 3)
    rows, scores = topk_cosine(np.ones((2, 2), np.float32), np.zeros((0, 2), np.float32), 3)
    assert rows.shape == (2, 0)


def test_memory_mapped_gallery_gives_the_same_result(tmp_path):
    rng = np.random.default_rng(12)
    queries, gallery = quantised(rng, 5, 3), quantised(rng, 37, 3)
    np.save(tmp_path / "g.npy", gallery)
    mapped = np.load(tmp_path / "g.npy", mmap_mode="r")
    assert_exact(topk_cosine(queries, mapped, 6, chunk_rows=10), brute_topk(queries, gallery, 6))


def test_float64_inputs_are_scored_in_float32():
    rng = np.random.default_rng(13)
    queries, gallery = unit(rng, 3, 8).astype(np.float64), unit(rng, 10, 8).astype(np.float64)
    rows, scores = topk_cosine(queries, gallery, 4, chunk_rows=3)
    assert scores.dtype == np.float32
    assert rows.tolist() == brute_topk(queries, gallery, 4)[0]


def test_bad_arguments_raise_value_error():
    q, g = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="k must be at least 1"):
        topk_cosine(q, g, 0)
    with pytest.raises(ValueError, match="2-D"):
        topk_cosine(np.ones(3, np.float32), g, 1)
    with pytest.raises(ValueError, match="dim 3"):
        topk_cosine(q, np.ones((4, 2), np.float32), 1)
    with pytest.raises(ValueError, match="chunk_rows"):
        topk_cosine(q, g, 1, chunk_rows=0)
    with pytest.raises(ValueError, match="same set"):
        topk_cosine(q, g, 1, leave_one_out=True)
