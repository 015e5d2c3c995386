"""Exact cosine top-k straight over a feature store's memory-mapped segments."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from clothsim.data.records import CatalogRecord
from clothsim.errors import UsageError
from clothsim.features.store import FeatureStore
from clothsim.index.base import SearchHit
from clothsim.index.topk import DEFAULT_CHUNK_ROWS, topk_over_blocks

logger = logging.getLogger(__name__)


class ExactIndex:
    """Brute-force (exact) cosine search: a matrix product per chunk and a partial sort.

    Memory stays bounded by ``chunk_rows x dim`` whatever the catalogue size, since segments are
    memory-mapped and read a chunk at a time. Results are exact, with ties broken by lower id.
    The store is the index: adding and deleting go straight to it, no rebuild.
    """

    name = "exact"

    def __init__(self, store: FeatureStore, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.store = store
        self.chunk_rows = chunk_rows

    def __len__(self) -> int:
        return len(self.store)

    def categories(self) -> dict[str, int]:
        """Live item count per category."""
        codes, names = self.store.category_codes()
        live = np.isin(self.store.all_ids(), self.store.live_ids())
        counts = np.bincount(codes[live], minlength=len(names))
        return {name: int(n) for name, n in zip(names, counts) if n}

    def _category_mask(self, category: str | Sequence[str] | None) -> np.ndarray | None:
        if category is None:
            return None
        wanted = {category} if isinstance(category, str) else set(category)
        codes, names = self.store.category_codes()
        unknown = wanted - set(names)
        if unknown:
            raise UsageError(f"unknown category {sorted(unknown)}; the index has {names}")
        return np.isin(codes, [names.index(name) for name in wanted])

    def search(
        self,
        queries: np.ndarray,
        k: int,
        category: str | Sequence[str] | None = None,
        exclude_ids: Sequence[int] | None = None,
    ) -> list[list[SearchHit]]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.store.dim:
            raise ValueError(f"queries have dim {queries.shape[1]}, the index holds {self.store.dim}-d vectors")
        exclude = None if exclude_ids is None else np.asarray(exclude_ids, dtype=np.int64)
        if exclude is not None and exclude.shape != (queries.shape[0],):
            raise ValueError(f"exclude_ids needs one id per query ({queries.shape[0]}), got {exclude.shape}")
        mask = self._category_mask(category)
        ids, scores = topk_over_blocks(queries, self.store.iter_blocks(self.chunk_rows, mask), k, exclude=exclude)
        return [
            [SearchHit(rank + 1, int(i), float(s), record)
             for rank, (i, s, record) in enumerate(zip(row_ids, row_scores, self.store.records_for(row_ids)))]
            for row_ids, row_scores in zip(ids, scores)
        ]

    def add(
        self, vectors: np.ndarray, records: Sequence[CatalogRecord], failures: Sequence[dict[str, str]] = ()
    ) -> np.ndarray:
        return self.store.append(vectors, records, failures=failures)

    def delete(self, ids: Sequence[int]) -> int:
        return self.store.delete(ids)

    def save(self) -> None:
        """Nothing to do: the store is the index, and every add or delete is committed at once."""

    def refresh(self) -> None:
        """Nothing to do: every search reads the store's current segments and tombstones."""


class ExactBackend:
    """The ``exact`` plug-in: nothing to build beyond the store, so build and open are the same."""

    description = "exact cosine top-k over the memory-mapped store (no extra files; add/delete at once)"

    def build(self, store: FeatureStore, **options: Any) -> ExactIndex:
        return ExactIndex(store, **options)

    def open(self, store: FeatureStore, **options: Any) -> ExactIndex:
        return ExactIndex(store, **options)
