"""Index backends in the comparison: each one built over an encoder's gallery, searched with the same
queries, scored with the same metrics, and compared with exact search (recall@10), so a user sees on
their own catalogue what an approximate index costs in quality and what it gains in time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from clothsim.errors import UsageError
from clothsim.evaluation.results import BackendResult
from clothsim.features.store import FeatureStore, StoredItem
from clothsim.metrics.average_precision import average_precision_at_k
from clothsim.metrics.precision import precision_at_k_per_query

logger = logging.getLogger(__name__)

RECALL_K = 10


def split_backend_options(backends: Sequence[str], pairs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"efSearch": 128, "milvus:uri": "http://h:19530"}`` -> options per backend.

    A key ``NAME:KEY`` goes to backend ``NAME`` only; a plain ``KEY`` goes to every backend asked for.

    Raises:
        UsageError: a ``NAME:`` prefix naming a backend that was not asked for.
    """
    per: dict[str, dict[str, Any]] = {name: {} for name in backends}
    for key, value in pairs.items():
        prefix, sep, rest = key.partition(":")
        if sep:
            if prefix not in per:
                raise UsageError(f"--backend-option {key}: {prefix!r} is not among the backends asked for "
                                 f"({', '.join(backends) or 'none'})")
            per[prefix][rest] = value
        else:
            for options in per.values():
                options[key] = value
    return per


def check_backends(backends: Sequence[str], options: dict[str, dict[str, Any]]) -> None:
    """Before anything is encoded: every backend exists and loads, its options are valid, and a
    database server it names answers.

    Raises:
        UsageError: unknown backend (the message lists the known ones) or a bad option.
        ClothsimError: a server that cannot be reached.
    """
    from clothsim.index.base import check_plugin_options, check_plugin_reachable
    from clothsim.index.registry import backend_registry

    if len(set(backends)) != len(backends):
        raise UsageError(f"backends are repeated: {list(backends)}")
    for name in backends:
        plugin = backend_registry.get(name)
        check_plugin_options(plugin, options.get(name, {}))
        check_plugin_reachable(plugin, options.get(name, {}))


def _padded(rows: list[list[Any]], width: int, fill: Any) -> np.ndarray:
    out = np.full((len(rows), width), fill, dtype=object)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row[:width]
    return out


def evaluate_backend(
    name: str,
    options: dict[str, Any],
    gallery: FeatureStore,
    query_vectors: np.ndarray,
    query_items: Sequence[StoredItem],
    exact_ids: np.ndarray,
    leave_one_out: bool,
    ks: Sequence[int],
    map_k: int,
) -> BackendResult:
    """Build ``name`` over ``gallery``, search every query, and score it.

    Args:
        name, options: The backend and its options.
        gallery: The gallery's feature store (the backend's files go into it, under ``backends/``).
        query_vectors: ``(q, d)`` queries.
        query_items: The queries' stored items (their ids are excluded in leave-one-out).
        exact_ids: ``(q, >=10)`` store ids of the exact ranking, best first.
        leave_one_out: The queries are the gallery; a query never retrieves itself.
        ks, map_k: Cut-offs, as for the exact numbers.
    """
    from clothsim.index.registry import backend_registry

    plugin = backend_registry.get(name)
    started = time.perf_counter()
    index = plugin.build(gallery, **options)
    index.save()
    build_s = time.perf_counter() - started
    try:
        k_max = max([*ks, map_k, RECALL_K])
        exclude = [it.id for it in query_items] if leave_one_out else None
        started = time.perf_counter()
        hits = index.search(query_vectors, k_max, exclude_ids=exclude)
        ms_per_query = 1000.0 * (time.perf_counter() - started) / max(len(query_items), 1)
    finally:
        close = getattr(index, "close", None)
        if close is not None:
            close()

    query_labels = [it.record.category for it in query_items]
    gallery_labels = gallery.category_codes()
    codes, names = gallery_labels
    live = np.isin(gallery.all_ids(), gallery.live_ids())
    counts = dict(zip(names, np.bincount(codes[live], minlength=len(names)).tolist()))
    lookup = {label: i for i, label in enumerate(sorted(set(query_labels) | set(names)))}
    query_codes = np.array([lookup[label] for label in query_labels], dtype=np.int64)
    retrieved = _padded([[lookup[h.record.category] for h in row] for row in hits], k_max, -1).astype(np.int64)
    n_relevant = np.array([counts.get(label, 0) for label in query_labels], dtype=np.int64) - int(leave_one_out)
    precision = {k: float(precision_at_k_per_query(query_codes, retrieved, k).mean()) for k in ks}
    map_at_k = float(average_precision_at_k(query_codes, retrieved, map_k, np.maximum(n_relevant, 0)).mean())

    recalls = []
    for row, exact in zip(hits, exact_ids):
        truth = {int(i) for i in exact[:RECALL_K] if i >= 0}
        if truth:
            recalls.append(len(truth & {h.id for h in row[:RECALL_K]}) / len(truth))
    recall = float(np.mean(recalls)) if recalls else 1.0
    logger.info("%s: recall@10 against exact %.3f, P@%d %.3f, %.2f ms/query, built in %.1f s", name, recall,
                ks[-1], precision[ks[-1]], ms_per_query, build_s)
    return BackendResult(name, dict(options), precision, map_at_k, recall, build_s, ms_per_query,
                         len(query_items))
