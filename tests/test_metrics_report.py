"""clothsim.metrics.report.evaluate_retrieval against a plain-loop evaluation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from clothsim.metrics import RetrievalReport, evaluate_retrieval


def naive_neighbours(queries, gallery, leave_one_out):
    """Every query's full ranking (cosine desc, lower row first on ties), per-pair loops."""
    out = []
    for i, q in enumerate(queries):
        scored = []
        for j, g in enumerate(gallery):
            if leave_one_out and i == j:
                continue
            cos = float(np.dot(q, g)) / (float(np.linalg.norm(q)) * float(np.linalg.norm(g)))
            scored.append((-cos, j))
        scored.sort()
        out.append([j for _, j in scored])
    return out


def naive_report(q_vec, q_lab, g_vec, g_lab, ks, map_k, q_ids, g_ids, recall_ks, leave_one_out):
    ranking = naive_neighbours(q_vec, g_vec, leave_one_out)
    precision_rows = {k: [] for k in ks}
    ap_rows, chance_rows = [], []
    for i, order in enumerate(ranking):
        labels = [g_lab[j] for j in order]
        for k in ks:
            top = labels[:k]
            precision_rows[k].append(sum(x == q_lab[i] for x in top) / len(top))
        relevant = sum(1 for j in range(len(g_lab)) if g_lab[j] == q_lab[i] and not (leave_one_out and j == i))
        hits, total = 0, 0.0
        for rank_, x in enumerate(labels[:map_k], start=1):
            if x == q_lab[i]:
                hits += 1
                total += hits / rank_
        denominator = min(len(labels[:map_k]), relevant)
        ap_rows.append(total / denominator if denominator else 0.0)
        chance_rows.append(relevant / len(order))
    recall = None
    if q_ids is not None:
        recall = {}
        for k in recall_ks:
            found = [q_ids[i] in [g_ids[j] for j in order[:k]] for i, order in enumerate(ranking)]
            recall[k] = sum(found) / len(found)
    per_category = {}
    for category in sorted(set(q_lab)):
        members = [i for i in range(len(q_lab)) if q_lab[i] == category]
        per_category[category] = {k: sum(precision_rows[k][i] for i in members) / len(members) for k in ks}
    return {
        "precision": {k: sum(v) / len(v) for k, v in precision_rows.items()},
        "map": sum(ap_rows) / len(ap_rows),
        "chance": sum(chance_rows) / len(chance_rows),
        "recall": recall,
        "per_category": per_category,
    }


def assert_report_matches(report, ref):
    assert report.precision == pytest.approx(ref["precision"])
    assert report.map_at_k == pytest.approx(ref["map"])
    assert report.chance_precision == pytest.approx(ref["chance"])
    assert report.per_category_precision.keys() == ref["per_category"].keys()
    for category, values in ref["per_category"].items():
        assert report.per_category_precision[category] == pytest.approx(values)
    if ref["recall"] is None:
        assert report.recall_at_k is None
    else:
        assert report.recall_at_k == pytest.approx(ref["recall"])


def clustered(rng, n, n_categories, dim=8, noise=0.8):
    """Vectors near one centre per category, so the metrics land well away from 0 and 1."""
    centres = rng.standard_normal((n_categories, dim))
    labels = rng.integers(0, n_categories, n)
    return (centres[labels] + noise * rng.standard_normal((n, dim))).astype(np.float32), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_query_against_gallery_matches_naive_evaluation(seed):
    rng = np.random.default_rng(seed)
    g_vec, g_lab_int = clustered(rng, 57, 4)
    q_vec, q_lab_int = g_vec[:19] + 0.3 * rng.standard_normal((19, 8)).astype(np.float32), g_lab_int[:19]
    names = np.array(["coat", "dress", "hat", "shoes"])
    g_lab, q_lab = names[g_lab_int], names[q_lab_int]
    g_ids = rng.integers(0, 20, 57)
    q_ids = g_ids[:19].copy()
    q_ids[:3] = 99  # items absent from the gallery: always misses
    report = evaluate_retrieval(
        q_vec,
        q_lab,
        g_vec,
        g_lab,
        ks=(1, 5, 10),
        map_k=7,
        query_item_ids=q_ids,
        gallery_item_ids=g_ids,
        recall_ks=(1, 10, 20),
        chunk_rows=6,
    )
    ref = naive_report(
        q_vec, q_lab.tolist(), g_vec, g_lab.tolist(), (1, 5, 10), 7, q_ids.tolist(), g_ids.tolist(), (1, 10, 20), False
    )
    assert_report_matches(report, ref)
    assert 0.0 < report.precision[5] < 1.0 and 0.0 < report.map_at_k < 1.0
    assert report.recall_at_k[20] <= 16 / 19
    assert (report.n_queries, report.n_gallery, report.n_retrieved) == (19, 57, 20)
    assert sum(report.category_counts.values()) == 19


@pytest.mark.parametrize("chunk", [1, 4, 23, 1000])
def test_leave_one_out_matches_naive_evaluation(chunk):
    rng = np.random.default_rng(42)
    vec, lab = clustered(rng, 23, 3)
    ids = rng.integers(0, 8, 23)
    ids[0] = 100  # the only image of its item: it can never be found again
    report = evaluate_retrieval(
        vec,
        lab,
        None,
        None,
        ks=(1, 3, 22),
        map_k=5,
        query_item_ids=ids,
        recall_ks=(1, 5),
        leave_one_out=True,
        chunk_rows=chunk,
    )
    ref = naive_report(vec, lab.tolist(), vec, lab.tolist(), (1, 3, 22), 5, ids.tolist(), ids.tolist(), (1, 5), True)
    assert_report_matches(report, ref)
    assert report.leave_one_out and report.n_retrieved == 22
    # k = n - 1 sees the whole gallery but the query itself: precision@22 equals the chance level.
    assert report.precision[22] == pytest.approx(report.chance_precision)


def test_hand_example_leave_one_out_with_duplicates():
    vec = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1]], dtype=np.float32)
    lab = ["a", "a", "b", "a", "b"]
    report = evaluate_retrieval(vec, lab, vec, lab, ks=(1, 2), map_k=2, leave_one_out=True)
    # Neighbours: 0 -> [1, 4]; 1 -> [0, 4]; 2 -> [3, 4]; 3 -> [2, 4]; 4 -> [0, 1] (ties: lower row).
    assert report.precision[1] == pytest.approx(2 / 5)
    assert report.precision[2] == pytest.approx((1 / 2 + 1 / 2 + 1 / 2 + 0 + 0) / 5)
    # AP@2 over min(2, R): 0: R=2 -> 1/2; 1: 1/2; 2: hit at 2, R=1 -> (1/2)/1; 3: 0; 4: 0.
    assert report.map_at_k == pytest.approx((0.5 + 0.5 + 0.5 + 0 + 0) / 5)
    # Chance: a -> 2/4 each (3 queries), b -> 1/4 each (2 queries).
    assert report.chance_precision == pytest.approx((3 * 0.5 + 2 * 0.25) / 5)
    assert report.per_category_precision["b"][1] == pytest.approx(0.0)
    assert report.category_counts == {"a": 3, "b": 2}


def test_cut_offs_beyond_the_gallery_are_clipped(caplog):
    rng = np.random.default_rng(3)
    g_vec, g_lab = clustered(rng, 6, 2)
    with caplog.at_level(logging.WARNING, logger="clothsim.metrics.report"):
        report = evaluate_retrieval(g_vec[:4], g_lab[:4], g_vec, g_lab, ks=(1, 50), map_k=50)
    assert "only 6 neighbours" in caplog.text
    assert report.n_retrieved == 6
    ref = naive_report(g_vec[:4], g_lab[:4].tolist(), g_vec, g_lab.tolist(), (1, 50), 50, None, None, (), False)
    assert_report_matches(report, ref)
    # Clipped to the whole gallery, precision counts every same-category item: the chance level.
    assert report.precision[50] == pytest.approx(report.chance_precision)


def test_to_dict_is_json_ready_with_string_keys():
    rng = np.random.default_rng(5)
    vec, lab = clustered(rng, 30, 3)
    report = evaluate_retrieval(
        vec, lab, None, None, ks=(1, 5), query_item_ids=lab, leave_one_out=True, recall_ks=(1, 10)
    )
    assert isinstance(report, RetrievalReport)
    data = json.loads(json.dumps(report.to_dict()))
    assert data == report.to_dict()
    assert set(data["precision"]) == {"1", "5"}
    assert set(data["recall_at_k"]) == {"1", "10"}
    assert data["precision"]["5"] == pytest.approx(report.precision[5])
    assert set(data["per_category_precision"]) == {str(c) for c in report.per_category_precision}
    assert data["n_queries"] == 30 and data["leave_one_out"] is True
    # Item ids equal to the categories: Recall@1 is exactly precision@1's "any hit" in the top 1.
    assert report.recall_at_k[1] == pytest.approx(report.precision[1])


def test_without_item_ids_recall_is_none():
    rng = np.random.default_rng(6)
    vec, lab = clustered(rng, 10, 2)
    report = evaluate_retrieval(vec, lab, vec, lab)
    assert report.recall_at_k is None and report.to_dict()["recall_at_k"] is None


def test_bad_input_raises_value_error():
    vec = np.eye(4, dtype=np.float32)
    lab = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="give both query_item_ids and gallery_item_ids"):
        evaluate_retrieval(vec, lab, vec, lab, query_item_ids=lab)
    with pytest.raises(ValueError, match="query_vectors has 4 rows but query_labels has 3"):
        evaluate_retrieval(vec, lab[:3], vec, lab)
    with pytest.raises(ValueError, match="gallery_vectors has 3 rows but gallery_labels has 4"):
        evaluate_retrieval(vec, lab, vec[:3], lab)
    with pytest.raises(ValueError, match="needed unless leave_one_out"):
        evaluate_retrieval(vec, lab, None, None)
    with pytest.raises(ValueError, match="nothing to retrieve"):
        evaluate_retrieval(vec[:1], lab[:1], None, None, leave_one_out=True)
    with pytest.raises(ValueError, match=r"ks\[1\] must be at least 1"):
        evaluate_retrieval(vec, lab, vec, lab, ks=(1, 0))
    with pytest.raises(ValueError, match="ks is empty"):
        evaluate_retrieval(vec, lab, vec, lab, ks=())
    with pytest.raises(ValueError, match="cannot be compared"):
        evaluate_retrieval(vec, lab, vec, np.array(["a", "b", "a", "b"]))
    with pytest.raises(ValueError, match="query_labels is empty"):
        evaluate_retrieval(vec[:0], lab[:0], vec, lab)
    with pytest.raises(ValueError, match="item ids must match"):
        evaluate_retrieval(vec, lab, vec, lab, query_item_ids=lab[:2], gallery_item_ids=lab)
