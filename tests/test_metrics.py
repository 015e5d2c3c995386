"""clothsim.metrics functions against naive loop references and hand-computed examples."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from clothsim.metrics import (
    average_precision_at_k,
    confusion_top1,
    hit_rate_at_k,
    hits_at_k,
    mean_average_precision_at_k,
    precision_at_k,
    precision_at_k_per_query,
    rank,
)

# ---------------------------------------------------------------- naive references (plain loops)


def naive_rank(queries, gallery, k, leave_one_out=False):
    """Cosine via per-pair loops in float64; ties go to the lower gallery row."""
    out = []
    for i, q in enumerate(queries):
        scored = []
        for j, g in enumerate(gallery):
            if leave_one_out and i == j:
                continue
            qn, gn = float(np.linalg.norm(q)), float(np.linalg.norm(g))
            cos = sum(float(a) * float(b) for a, b in zip(q, g)) / (qn * gn) if qn and gn else 0.0
            scored.append((-cos, j))
        scored.sort()
        out.append([j for _, j in scored[:k]])
    return out


def naive_precision(query_labels, retrieved, k):
    values = []
    for label, row in zip(query_labels, retrieved):
        top = list(row)[:k]
        values.append(sum(1 for x in top if x == label) / len(top))
    return sum(values) / len(values)


def naive_ap(label, row, k, n_relevant=None):
    hits, total = 0, 0.0
    top = list(row)[:k]
    for i, x in enumerate(top, start=1):
        if x == label:
            hits += 1
            total += hits / i
    denominator = hits if n_relevant is None else min(len(top), n_relevant)
    return total / denominator if denominator else 0.0


def naive_hit_rate(query_ids, retrieved, k):
    return sum(1 for q, row in zip(query_ids, retrieved) if q in list(row)[:k]) / len(query_ids)


# ---------------------------------------------------------------- hand-computed examples


def test_ap_of_hit_miss_hit_is_mean_of_precisions_at_hits():
    ap = average_precision_at_k(["a"], [["a", "b", "a"]], 3)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)


def test_ap_with_n_relevant_divides_by_min_k_and_r():
    # Two hits found, four relevant in the gallery, k = 3: divide by min(3, 4) = 3.
    ap = average_precision_at_k(["a"], [["a", "b", "a"]], 3, n_relevant=4)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 3)
    # Only two relevant items exist and both were found: the same ranking scores as before.
    ap = average_precision_at_k(["a"], [["a", "b", "a"]], 3, n_relevant=2)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)


def test_ap_examples_and_zero_cases():
    queries = [1, 1, 1, 2]
    retrieved = [[1, 1, 1], [0, 0, 1], [0, 0, 0], [0, 2, 0]]
    np.testing.assert_allclose(average_precision_at_k(queries, retrieved, 3), [1.0, 1 / 3, 0.0, 0.5])
    np.testing.assert_allclose(
        average_precision_at_k(queries, retrieved, 3, n_relevant=[3, 1, 0, 5]), [1.0, 1 / 3, 0.0, 0.5 / 3]
    )
    assert mean_average_precision_at_k(queries, retrieved, 3) == pytest.approx((1 + 1 / 3 + 0 + 0.5) / 4)
    # k = 1 looks at the first column only.
    np.testing.assert_allclose(average_precision_at_k(queries, retrieved, 1), [1.0, 0.0, 0.0, 0.0])


def test_precision_hand_example_and_clipped_denominator():
    queries = ["shirt", "dress"]
    retrieved = [["shirt", "pants", "shirt"], ["dress", "dress", "hat"]]
    assert precision_at_k_per_query(queries, retrieved, 2).tolist() == [0.5, 1.0]
    assert precision_at_k(queries, retrieved, 3) == pytest.approx((2 / 3 + 2 / 3) / 2)
    # Only three neighbours exist: precision@10 divides by 3, not 10.
    assert precision_at_k(queries, retrieved, 10) == pytest.approx(precision_at_k(queries, retrieved, 3))


def test_hit_rate_hand_example():
    query_ids = ["id1", "id2", "id3"]
    retrieved = [["id9", "id1", "id1"], ["id2", "id5", "id6"], ["id4", "id4", "id4"]]
    assert hits_at_k(query_ids, retrieved, 1).tolist() == [False, True, False]
    assert hit_rate_at_k(query_ids, retrieved, 1) == pytest.approx(1 / 3)
    assert hit_rate_at_k(query_ids, retrieved, 2) == pytest.approx(2 / 3)
    assert hit_rate_at_k(query_ids, retrieved, 50) == pytest.approx(2 / 3)


def test_confusion_top1_hand_example():
    matrix, categories = confusion_top1(["a", "a", "b", "c", "c", "c"], ["a", "b", "b", "a", "c", "c"])
    assert categories == ["a", "b", "c"]
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert matrix.sum() == 6 and np.trace(matrix) == 4


def test_confusion_top1_with_given_categories_keeps_their_order_and_empty_rows():
    matrix, categories = confusion_top1([2, 0], [0, 0], categories=[2, 1, 0])
    assert categories == [2, 1, 0]
    assert matrix.tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 1]]


# ---------------------------------------------------------------- against the references, seeded


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_naive_references_on_random_rankings(seed):
    rng = np.random.default_rng(seed)
    n_q, m = 40, 12
    queries = rng.integers(0, 4, n_q)
    retrieved = rng.integers(0, 4, (n_q, m))
    n_relevant = (retrieved == queries[:, None]).sum(axis=1) + rng.integers(0, 5, n_q)
    for k in (1, 3, 5, 12, 30):
        assert precision_at_k(queries, retrieved, k) == pytest.approx(naive_precision(queries, retrieved, k))
        ref = [naive_ap(q, row, k) for q, row in zip(queries, retrieved)]
        np.testing.assert_allclose(average_precision_at_k(queries, retrieved, k), ref)
        ref = [naive_ap(q, row, k, r) for q, row, r in zip(queries, retrieved, n_relevant)]
        np.testing.assert_allclose(average_precision_at_k(queries, retrieved, k, n_relevant), ref)
        assert mean_average_precision_at_k(queries, retrieved, k, n_relevant) == pytest.approx(np.mean(ref))
        assert hit_rate_at_k(queries, retrieved, k) == pytest.approx(naive_hit_rate(queries, retrieved, k))


@pytest.mark.parametrize(
    ("n_q", "n_g", "k", "chunk", "query_chunk"),
    [(17, 45, 5, 7, 4), (9, 6, 10, 4, 2), (12, 30, 30, 11, 5), (1, 13, 3, 100, 1000)],
)
def test_rank_matches_naive_cosine_with_ties(n_q, n_g, k, chunk, query_chunk):
    rng = np.random.default_rng(n_q + n_g)
    # Small integers with different norms: many exact cosine ties after normalisation.
    gallery = rng.integers(-1, 2, (n_g, 2)).astype(np.float32)
    gallery[np.abs(gallery).sum(axis=1) == 0] = (1.0, 1.0)  # no zero rows: cosine is undefined there
    gallery *= rng.integers(1, 4, (n_g, 1))  # same direction, different length: a cosine tie
    queries = rng.integers(-1, 2, (n_q, 2)).astype(np.float32)
    queries[np.abs(queries).sum(axis=1) == 0] = (0.0, 1.0)
    rows, scores = rank(queries, gallery, k, chunk_rows=chunk, query_chunk_rows=query_chunk)
    assert rows.shape == (n_q, min(k, n_g))
    ref = naive_rank(queries, gallery, k)
    assert (scores[:, 1:] == scores[:, :-1]).any()  # the data does produce ties
    # Ties of exactly equal cosine can differ by one float32 ulp after normalisation; compare
    # the score sequence, and rows wherever the reference's neighbours are not tied.
    for i in range(n_q):
        ref_scores = [
            float(queries[i] @ gallery[j] / (np.linalg.norm(queries[i]) * np.linalg.norm(gallery[j]))) for j in ref[i]
        ]
        np.testing.assert_allclose(scores[i], ref_scores, atol=1e-6)
        for col in range(len(ref[i])):
            tied = [r for r, s in zip(ref[i], ref_scores) if abs(s - ref_scores[col]) < 1e-6]
            assert rows[i, col] in tied


def test_rank_breaks_exact_ties_by_lower_row_across_chunks():
    gallery = np.array([[0, 1], [1, 0], [2, 0], [0, 3], [5, 0], [1, 0]], dtype=np.float32)
    queries = np.array([[1, 0], [0, 2]], dtype=np.float32)
    for chunk in (1, 2, 4, 6):
        for query_chunk in (1, 2):
            rows, scores = rank(queries, gallery, 6, chunk_rows=chunk, query_chunk_rows=query_chunk)
            assert rows.tolist() == [[1, 2, 4, 5, 0, 3], [0, 3, 1, 2, 4, 5]]
            np.testing.assert_allclose(scores, [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], atol=1e-7)


@pytest.mark.parametrize(("k", "chunk", "query_chunk"), [(1, 3, 2), (4, 5, 7), (25, 7, 3), (40, 4, 10)])
def test_rank_leave_one_out_matches_naive_and_skips_self(k, chunk, query_chunk):
    rng = np.random.default_rng(21)
    data = rng.standard_normal((26, 6)).astype(np.float32)
    data[10] = data[3] * 2  # a scaled duplicate: cosine 1, must rank first for 3 and 10
    rows, _ = rank(data, None, k, leave_one_out=True, chunk_rows=chunk, query_chunk_rows=query_chunk)
    assert rows.shape == (26, min(k, 25))
    assert not (rows == np.arange(26)[:, None]).any()
    assert rows[3, 0] == 10 and rows[10, 0] == 3
    assert rows.tolist() == naive_rank(data, data, k, leave_one_out=True)


def test_rank_query_batches_equal_one_batch():
    rng = np.random.default_rng(4)
    queries, gallery = rng.standard_normal((50, 8)), rng.standard_normal((70, 8))
    whole = rank(queries, gallery, 9, chunk_rows=70, query_chunk_rows=50)
    tiled = rank(queries, gallery, 9, chunk_rows=9, query_chunk_rows=7)
    np.testing.assert_array_equal(whole[0], tiled[0])
    np.testing.assert_allclose(whole[1], tiled[1], atol=1e-6)


def test_rank_without_normalisation_uses_raw_dot_product():
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    gallery = np.array([[1.0, 0.0], [3.0, 3.0]], dtype=np.float32)
    assert rank(queries, gallery, 2)[0].tolist() == [[0, 1]]
    assert rank(queries, gallery, 2, normalize=False)[0].tolist() == [[1, 0]]


def test_rank_memory_mapped_gallery(tmp_path):
    rng = np.random.default_rng(8)
    queries, gallery = rng.standard_normal((6, 5)), rng.standard_normal((33, 5)).astype(np.float32)
    np.save(tmp_path / "g.npy", gallery)
    mapped = np.load(tmp_path / "g.npy", mmap_mode="r")
    assert rank(queries, mapped, 4, chunk_rows=8)[0].tolist() == naive_rank(queries, gallery, 4)


def test_rank_zero_gallery_row_warns_and_scores_zero(caplog):
    gallery = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="clothsim.metrics.ranking"):
        rows, scores = rank(np.array([[1.0, 0.0]]), gallery, 3)
    assert "1 gallery rows are all zeros" in caplog.text
    assert rows.tolist() == [[1, 0, 2]] and scores.tolist() == [[1.0, 0.0, -1.0]]


def test_rank_empty_cases():
    rows, scores = rank(np.zeros((0, 3)), np.ones((4, 3)), 2)
    assert rows.shape == (0, 2) and scores.shape == (0, 2)
    rows, _ = rank(np.ones((1, 3)), None, 5, leave_one_out=True)
    assert rows.shape == (1, 0)


def test_rank_rejects_bad_input():
    q, g = np.ones((2, 3)), np.ones((4, 3))
    with pytest.raises(ValueError, match="k must be at least 1"):
        rank(q, g, 0)
    with pytest.raises(ValueError, match="k must be an integer"):
        rank(q, g, 2.5)
    with pytest.raises(ValueError, match="query_vectors have dim 3 but gallery_vectors have dim 2"):
        rank(q, np.ones((4, 2)), 1)
    with pytest.raises(ValueError, match="2 queries and 4 gallery rows"):
        rank(q, g, 1, leave_one_out=True)
    with pytest.raises(ValueError, match="gallery_vectors is None"):
        rank(q, None, 1)
    bad = g.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"gallery_vectors\[2\] has a non-finite value"):
        rank(q, bad, 1, chunk_rows=2)
    with pytest.raises(ValueError, match="query_chunk_rows must be at least 1"):
        rank(q, g, 1, query_chunk_rows=0)


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match=r"must have shape \(2, m\)"):
        precision_at_k([1, 2], [[1, 2]], 1)
    with pytest.raises(ValueError, match="no columns"):
        precision_at_k([1, 2], np.zeros((2, 0), dtype=int), 1)
    with pytest.raises(ValueError, match="empty"):
        precision_at_k(np.array([], dtype=int), np.zeros((0, 3), dtype=int), 1)
    with pytest.raises(ValueError, match="cannot be compared"):
        precision_at_k(["a", "b"], [[1], [2]], 1)
    with pytest.raises(ValueError, match=r"query_labels\[1\] is None"):
        precision_at_k(np.array(["a", None], dtype=object), [["a"], ["a"]], 1)
    with pytest.raises(ValueError, match=r"n_relevant\[0\] is 1 but query 0 has 2 relevant"):
        average_precision_at_k([1], [[1, 1]], 2, n_relevant=[1])
    with pytest.raises(ValueError, match=r"n_relevant\[1\] is negative"):
        average_precision_at_k([1, 2], [[1], [2]], 1, n_relevant=[1, -1])
    with pytest.raises(ValueError, match="shape"):
        average_precision_at_k([1, 2], [[1], [2]], 1, n_relevant=[1, 1, 1])
    with pytest.raises(ValueError, match="not one of categories"):
        confusion_top1(["a"], ["z"], categories=["a", "b"])
    with pytest.raises(ValueError, match="repeated"):
        confusion_top1(["a"], ["a"], categories=["a", "a"])
    with pytest.raises(ValueError, match="3 labels but top1_labels has 2"):
        confusion_top1(["a", "b", "c"], ["a", "b"])
