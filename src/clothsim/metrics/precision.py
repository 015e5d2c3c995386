"""Precision@k and the In-shop hit rate (Recall@K) from a ranked label matrix.

A ranked label matrix has one row per query and, in column ``j``, the label of the query's
``j``-th nearest gallery item (best first). When fewer than ``k`` neighbours were retrieved (a gallery
smaller than ``k``), ``k`` is clipped to the number of columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clothsim.metrics._checks import relevance


def precision_at_k_per_query(query_labels: Any, retrieved_labels: Any, k: int) -> np.ndarray:
    """Per-query fraction of the top ``k`` neighbours whose label equals the query's.

    Args:
        query_labels: ``(q,)`` label of each query.
        retrieved_labels: ``(q, m)`` labels of each query's neighbours, best first.
        k: Cut-off; the denominator is ``min(k, m)``, the number of neighbours actually retrieved.

    Returns:
        ``(q,)`` float64 array of values in ``[0, 1]``.

    Raises:
        ValueError: On bad shapes, ``k < 1``, no queries, or ``m == 0``.
    """
    hits = relevance("query_labels", query_labels, "retrieved_labels", retrieved_labels, k)
    return hits.sum(axis=1) / hits.shape[1]


def precision_at_k(query_labels: Any, retrieved_labels: Any, k: int) -> float:
    """Precision@k averaged over queries (see :func:`precision_at_k_per_query`)."""
    return float(precision_at_k_per_query(query_labels, retrieved_labels, k).mean())


def hits_at_k(query_item_ids: Any, retrieved_item_ids: Any, k: int) -> np.ndarray:
    """Per-query flag: does any of the top ``k`` neighbours show the query's item?

    Args:
        query_item_ids: ``(q,)`` item id of each query image.
        retrieved_item_ids: ``(q, m)`` item ids of each query's neighbours, best first.
        k: Cut-off (clipped to ``m``).

    Returns:
        ``(q,)`` boolean array.
    """
    hits = relevance("query_item_ids", query_item_ids, "retrieved_item_ids", retrieved_item_ids, k)
    return hits.any(axis=1)


def hit_rate_at_k(query_item_ids: Any, retrieved_item_ids: Any, k: int) -> float:
    """Recall@K of the DeepFashion In-shop protocol: the fraction of queries hit within the top ``K``.

    A query is a hit when at least one of its top ``K`` gallery images has the query's item id
    (the protocol reports ``K`` = 1, 10, 20, 30, 40, 50). Queries whose item has no image in the
    gallery stay in the denominator and count as misses.
    """
    return float(hits_at_k(query_item_ids, retrieved_item_ids, k).mean())
