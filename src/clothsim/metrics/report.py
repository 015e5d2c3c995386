"""One call from embeddings and labels to every retrieval number, as a JSON-ready report."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from clothsim.metrics._checks import as_label_vector, check_comparable, check_k
from clothsim.metrics.average_precision import average_precision_at_k
from clothsim.metrics.precision import hits_at_k, precision_at_k_per_query
from clothsim.metrics.ranking import DEFAULT_CHUNK_ROWS, rank
from clothsim.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 10)
DEFAULT_RECALL_KS = (1, 10, 20, 30, 40, 50)


@dataclass(frozen=True)
class RetrievalReport:
    """Retrieval quality of one embedding over one query/gallery split.

    Attributes:
        precision: ``{k: mean precision@k}`` (same-category neighbours among the top k).
        map_k: Cut-off of :attr:`map_at_k`.
        map_at_k: Mean AP@``map_k``, normalised by ``min(k, R)`` with ``R`` the number of gallery
            items of the query's category (the query itself excluded in leave-one-out).
        recall_at_k: ``{K: In-shop Recall@K}`` (a query is a hit when one of its top K has its
            item id), or ``None`` when no item ids were given.
        per_category_precision: ``{category: {k: precision@k over that category's queries}}``.
        category_counts: ``{category: number of queries}``.
        chance_precision: Expected precision of a random ranking: per query, the fraction of the
            gallery (less the query itself in leave-one-out) sharing its category, averaged.
        n_queries: Number of queries.
        n_gallery: Number of gallery items.
        n_retrieved: Neighbours actually ranked per query; below a ``k`` it clips that ``k``.
        leave_one_out: Whether the queries were the gallery.
    """

    precision: dict[int, float]
    map_k: int
    map_at_k: float
    recall_at_k: dict[int, float] | None
    per_category_precision: dict[Any, dict[int, float]]
    category_counts: dict[Any, int]
    chance_precision: float
    n_queries: int
    n_gallery: int
    n_retrieved: int
    leave_one_out: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; mapping keys (cut-offs, categories) become strings."""

        def by_k(values: dict[int, float]) -> dict[str, float]:
            return {str(k): float(v) for k, v in values.items()}

        return {
            "n_queries": self.n_queries,
            "n_gallery": self.n_gallery,
            "n_retrieved": self.n_retrieved,
            "leave_one_out": self.leave_one_out,
            "precision": by_k(self.precision),
            "map_k": self.map_k,
            "map_at_k": float(self.map_at_k),
            "recall_at_k": None if self.recall_at_k is None else by_k(self.recall_at_k),
            "chance_precision": float(self.chance_precision),
            "per_category_precision": {str(c): by_k(v) for c, v in self.per_category_precision.items()},
            "category_counts": {str(c): int(n) for c, n in self.category_counts.items()},
        }


def _check_ks(name: str, ks: Sequence[int]) -> tuple[int, ...]:
    values = tuple(check_k(f"{name}[{i}]", k) for i, k in enumerate(ks))
    if not values:
        raise ValueError(f"{name} is empty: give at least one cut-off")
    return values


def _encode(query_labels: np.ndarray, gallery_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """Integer codes for both label sets over their sorted union (so counting is a bincount)."""
    try:
        categories, codes = np.unique(np.concatenate([query_labels, gallery_labels]), return_inverse=True)
    except TypeError as exc:  # object arrays mixing str and int cannot be sorted
        raise ValueError(f"labels cannot be sorted into categories: {exc}") from exc
    codes = codes.reshape(-1)
    return codes[: len(query_labels)], codes[len(query_labels) :], categories.tolist()


def _item_vectors(query_item_ids: Any, gallery_item_ids: Any, n_queries: int, n_gallery: int,
                  leave_one_out: bool) -> tuple[np.ndarray, np.ndarray]:
    """The query and gallery item ids as checked label vectors (the queries' own with ``leave_one_out``)."""
    if leave_one_out and gallery_item_ids is None:
        gallery_item_ids = query_item_ids
    if query_item_ids is None or gallery_item_ids is None:
        raise ValueError("give both query_item_ids and gallery_item_ids, or neither")
    query_items = as_label_vector("query_item_ids", query_item_ids)
    gallery_items = as_label_vector("gallery_item_ids", gallery_item_ids)
    if len(query_items) != n_queries or len(gallery_items) != n_gallery:
        raise ValueError(
            f"item ids must match the labels: {len(query_items)} query ids for {n_queries} queries, "
            f"{len(gallery_items)} gallery ids for {n_gallery} gallery items"
        )
    check_comparable("query_item_ids", query_items, "gallery_item_ids", gallery_items)
    return query_items, gallery_items


def _per_category(query_codes: np.ndarray, categories: list[Any], per_query: dict[int, np.ndarray]
                  ) -> tuple[dict[Any, dict[int, float]], dict[Any, int]]:
    """Precision@k per query category, and how many queries each category has."""
    per_category: dict[Any, dict[int, float]] = {}
    category_counts: dict[Any, int] = {}
    for code in np.unique(query_codes):
        mask = query_codes == code
        category = categories[int(code)]
        per_category[category] = {k: float(values[mask].mean()) for k, values in per_query.items()}
        category_counts[category] = int(mask.sum())
    return per_category, category_counts


def _recall_at_k(query_items: np.ndarray, gallery_items: np.ndarray, rows: np.ndarray, recall_ks: Sequence[int],
                 leave_one_out: bool) -> dict[int, float]:
    """In-shop Recall@K: the share of queries with an image of their own item among the first K."""
    retrieved_items = gallery_items[rows]
    missing = ~np.isin(query_items, gallery_items)
    if leave_one_out:
        # The query's own row does not count: its item must appear at another row.
        item_codes, item_counts = np.unique(gallery_items, return_counts=True)
        missing = item_counts[np.searchsorted(item_codes, query_items)] < 2
    if missing.any():
        logger.warning(
            "%d queries have no image of their item in the gallery; they count as misses", int(missing.sum())
        )
    return {k: float(hits_at_k(query_items, retrieved_items, k).mean()) for k in recall_ks}


def evaluate_retrieval(
    query_vectors: np.ndarray,
    query_labels: Any,
    gallery_vectors: np.ndarray | None,
    gallery_labels: Any,
    ks: Sequence[int] = DEFAULT_KS,
    map_k: int = 10,
    query_item_ids: Any = None,
    gallery_item_ids: Any = None,
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    leave_one_out: bool = False,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> RetrievalReport:
    """Rank the gallery for every query by cosine similarity and score the ranking.

    Args:
        query_vectors: ``(q, d)`` query embeddings.
        query_labels: ``(q,)`` query categories.
        gallery_vectors: ``(n, d)`` gallery embeddings; ``None`` with ``leave_one_out``.
        gallery_labels: ``(n,)`` gallery categories; ``None`` with ``leave_one_out``.
        ks: Cut-offs for precision@k (and the per-category breakdown).
        map_k: Cut-off for mAP.
        query_item_ids: ``(q,)`` item ids for the In-shop Recall@K; give both or neither.
        gallery_item_ids: ``(n,)`` item ids of the gallery.
        recall_ks: Cut-offs for Recall@K.
        leave_one_out: Score the query set against itself; a query never retrieves itself.
        chunk_rows: Gallery rows scored at a time (memory bound, see :func:`~clothsim.metrics.rank`).

    Returns:
        A :class:`RetrievalReport`.

    Raises:
        ValueError: On mismatched lengths, bad cut-offs, only one side of the item ids, an empty
            query set, or a gallery with nothing to retrieve.
    """
    ks = _check_ks("ks", ks)
    map_k = check_k("map_k", map_k)
    query_labels = as_label_vector("query_labels", query_labels)
    if leave_one_out and gallery_labels is None:
        gallery_labels = query_labels
    if leave_one_out and gallery_vectors is None:
        gallery_vectors = query_vectors
    if gallery_labels is None or gallery_vectors is None:
        raise ValueError("gallery_vectors and gallery_labels are needed unless leave_one_out=True")
    gallery_labels = as_label_vector("gallery_labels", gallery_labels)
    check_comparable("query_labels", query_labels, "gallery_labels", gallery_labels)
    n_queries, n_gallery = len(query_labels), len(gallery_labels)
    if len(query_vectors) != n_queries:
        raise ValueError(f"query_vectors has {len(query_vectors)} rows but query_labels has {n_queries} labels")
    if len(gallery_vectors) != n_gallery:
        raise ValueError(f"gallery_vectors has {len(gallery_vectors)} rows but gallery_labels has {n_gallery} labels")
    if n_queries == 0:
        raise DataError("query_labels is empty: there are no queries to score")

    with_items = query_item_ids is not None or gallery_item_ids is not None
    if with_items:
        query_items, gallery_items = _item_vectors(query_item_ids, gallery_item_ids, n_queries, n_gallery,
                                                   leave_one_out)
        recall_ks = _check_ks("recall_ks", recall_ks)

    k_max = max(ks + (map_k,) + (recall_ks if with_items else ()))
    rows, _ = rank(query_vectors, gallery_vectors, k_max, leave_one_out=leave_one_out, chunk_rows=chunk_rows)
    n_retrieved = rows.shape[1]
    if n_retrieved == 0:
        raise DataError(f"the gallery ({n_gallery} items, leave_one_out={leave_one_out}) has nothing to retrieve")
    if n_retrieved < k_max:
        logger.warning("only %d neighbours per query exist; larger cut-offs are clipped to it", n_retrieved)

    query_codes, gallery_codes, categories = _encode(query_labels, gallery_labels)
    retrieved_codes = gallery_codes[rows]
    n_relevant = np.bincount(gallery_codes, minlength=len(categories))[query_codes] - int(leave_one_out)
    pool = n_gallery - int(leave_one_out)
    chance = float((n_relevant / pool).mean())

    per_query = {k: precision_at_k_per_query(query_codes, retrieved_codes, k) for k in ks}
    precision = {k: float(values.mean()) for k, values in per_query.items()}
    map_at_k = float(average_precision_at_k(query_codes, retrieved_codes, map_k, n_relevant).mean())

    per_category, category_counts = _per_category(query_codes, categories, per_query)
    recall_at_k = None
    if with_items:
        recall_at_k = _recall_at_k(query_items, gallery_items, rows, recall_ks, leave_one_out)

    return RetrievalReport(
        precision=precision,
        map_k=map_k,
        map_at_k=map_at_k,
        recall_at_k=recall_at_k,
        per_category_precision=per_category,
        category_counts=category_counts,
        chance_precision=chance,
        n_queries=n_queries,
        n_gallery=n_gallery,
        n_retrieved=n_retrieved,
        leave_one_out=leave_one_out,
    )
