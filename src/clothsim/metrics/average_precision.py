"""Average precision at a cut-off, per query and averaged (mAP@k).

Normalisation (the usual one for retrieval with a cut-off)::

    AP@k = sum_{i <= k, item i relevant} precision@i / min(k, R)

where ``R`` is the number of relevant items in the gallery (``n_relevant``). A perfect ranking then
scores 1 even when ``R < k``. Without ``n_relevant`` the sum is divided by the number of hits in the
top ``k`` instead, which only judges the order of what was found. A query with nothing to find
(denominator 0) scores 0. As for precision, ``k`` is clipped to the number of retrieved columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clothsim.metrics._checks import relevance


def _as_n_relevant(n_relevant: Any, n_queries: int) -> np.ndarray:
    counts = np.asarray(n_relevant)
    if counts.dtype.kind not in "iu":
        raise ValueError(f"n_relevant must hold integers, got dtype {counts.dtype}")
    if counts.ndim == 0:
        counts = np.full(n_queries, int(counts))
    if counts.shape != (n_queries,):
        raise ValueError(f"n_relevant must be a scalar or have shape ({n_queries},), got {counts.shape}")
    if (counts < 0).any():
        bad = int(np.flatnonzero(counts < 0)[0])
        raise ValueError(f"n_relevant[{bad}] is negative ({counts[bad]})")
    return counts.astype(np.int64)


def average_precision_at_k(query_labels: Any, retrieved_labels: Any, k: int, n_relevant: Any = None) -> np.ndarray:
    """Per-query AP@k (normalisation in the module docstring).

    Args:
        query_labels: ``(q,)`` label of each query.
        retrieved_labels: ``(q, m)`` labels of each query's neighbours, best first.
        k: Cut-off, clipped to ``m``.
        n_relevant: Number of gallery items relevant to each query (scalar or ``(q,)``, not counting
            the query itself in leave-one-out), or ``None`` to divide by the hits found.

    Returns:
        ``(q,)`` float64 array of values in ``[0, 1]``.

    Raises:
        ValueError: On bad shapes or ``k``, or when a query has more hits than ``n_relevant`` allows.
    """
    hits = relevance("query_labels", query_labels, "retrieved_labels", retrieved_labels, k)
    k_eff = hits.shape[1]
    found = hits.sum(axis=1)
    precision_at_i = np.cumsum(hits, axis=1) / np.arange(1, k_eff + 1)
    summed = (precision_at_i * hits).sum(axis=1)
    if n_relevant is None:
        denominator = found
    else:
        counts = _as_n_relevant(n_relevant, hits.shape[0])
        short = np.flatnonzero(found > counts)
        if short.size:
            q = int(short[0])
            raise ValueError(
                f"n_relevant[{q}] is {counts[q]} but query {q} has {found[q]} relevant items in its top {k_eff}"
            )
        denominator = np.minimum(k_eff, counts)
    out = np.zeros(hits.shape[0], dtype=np.float64)
    np.divide(summed, denominator, out=out, where=denominator > 0)
    return out


def mean_average_precision_at_k(query_labels: Any, retrieved_labels: Any, k: int, n_relevant: Any = None) -> float:
    """mAP@k: :func:`average_precision_at_k` averaged over queries."""
    return float(average_precision_at_k(query_labels, retrieved_labels, k, n_relevant).mean())
