"""Exact cosine top-k straight over a feature store's memory-mapped segments."""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

import numpy as np

from clothsim.data.records import CatalogRecord
from clothsim.errors import UsageError
from clothsim.features.store import FeatureStore, Segment, StoreIntegrityError
from clothsim.index.base import SearchHit
from clothsim.index.topk import TILE_ROWS, ScanPart, ScoreRangeError, scan_topk

logger = logging.getLogger(__name__)

_MASK_CACHE = 16


class ExactIndex:
    """Brute-force (exact) cosine search over every stored row, at the speed the memory can deliver them.

    Segments are memory-mapped and read tile by tile (:func:`clothsim.index.topk.scan_topk`): float32
    rows are multiplied where they lie, float16 rows are converted tile by tile, deleted rows and category
    filters are boolean masks over each segment's contiguous range, and metadata is only turned into
    records for the hits returned. Results are exact, ties broken by lower id. The store is the index:
    adding and deleting go straight to it, no rebuild.

    Args:
        store: The feature store to search.
        chunk_rows: Rows per tile (memory for scores is ``queries x chunk_rows``); default
            :data:`~clothsim.index.topk.TILE_ROWS`.
    """

    name = "exact"

    def __init__(self, store: FeatureStore, chunk_rows: int | None = None) -> None:
        chunk_rows = TILE_ROWS if chunk_rows is None else int(chunk_rows)
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.store = store
        self.chunk_rows = chunk_rows
        self._lock = threading.Lock()
        self._private_maps: dict[str, np.ndarray] = {}
        self._masks: dict[tuple, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.store)

    def categories(self) -> dict[str, int]:
        """Live item count per category."""
        codes, names = self.store.category_codes()
        live = codes[self.store.live_mask()]
        counts = np.bincount(live[live >= 0], minlength=len(names))  # rows without a category are not counted
        return {name: int(n) for name, n in zip(names, counts) if n}

    def _category_mask(self, category: str | Sequence[str] | None) -> np.ndarray | None:
        if category is None:
            return None
        wanted = {category} if isinstance(category, str) else set(category)
        codes, names = self.store.category_codes()
        unknown = wanted - set(names)
        if unknown:
            shown = names if len(names) <= 30 else names[:30] + [f"... {len(names) - 30} more"]
            raise UsageError(f"unknown category {sorted(unknown)[:5]}; the index has {shown}")
        key = (tuple(sorted(wanted)), id(codes))
        with self._lock:
            mask = self._masks.get(key)
            if mask is None:
                mask = np.isin(codes, [names.index(name) for name in wanted])
                if len(self._masks) >= _MASK_CACHE:
                    self._masks.clear()
                self._masks[key] = mask
        return mask

    def _vectors(self, segment: Segment, array: np.ndarray) -> np.ndarray:
        """float16 segments mapped privately (copy-on-write, never written) so torch can read them in place."""
        if array.dtype != np.float16 or not isinstance(array, np.memmap):
            return array
        with self._lock:
            mapped = self._private_maps.get(segment.name)
            if mapped is None:
                mapped = np.load(segment.vectors_path, mmap_mode="c")
                self._private_maps[segment.name] = mapped
        return mapped

    def search(
        self,
        queries: np.ndarray,
        k: int,
        category: str | Sequence[str] | None = None,
        exclude_ids: Sequence[int] | None = None,
    ) -> list[list[SearchHit]]:
        ids, scores = self._scan(queries, k, category, exclude_ids)
        self.store.check_rows(ids.ravel())  # every hit against its row checksum before it is served
        records = self.store.records_for(ids.ravel())
        width = ids.shape[1]
        return [
            [SearchHit(rank + 1, int(i), float(s), records[row * width + rank])
             for rank, (i, s) in enumerate(zip(row_ids, row_scores))]
            for row, (row_ids, row_scores) in enumerate(zip(ids, scores))
        ]

    def neighbours(self, queries: np.ndarray, k: int,
                   exclude_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest live items as ``(ids, scores)`` arrays, padded with -1 / -inf (see
        :class:`~clothsim.index.base.NeighbourSearch`). Unlike :meth:`search`, the rows are not checked
        against their checksums here: the caller checks the ones it keeps."""
        ids, scores = self._scan(queries, k, None, exclude_ids)
        if ids.shape[1] < k:
            pad = k - ids.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return ids, scores

    def _scan(self, queries: np.ndarray, k: int, category: str | Sequence[str] | None,
              exclude_ids: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.ndim != 2 or queries.shape[1] != self.store.dim:
            raise ValueError(f"queries have dim {queries.shape[-1]}, the index holds {self.store.dim}-d vectors")
        exclude = None if exclude_ids is None else np.asarray(exclude_ids, dtype=np.int64)
        if exclude is not None and exclude.shape != (queries.shape[0],):
            raise ValueError(f"exclude_ids needs one id per query ({queries.shape[0]}), got {exclude.shape}")
        keep = self.store.live_mask()
        mask = self._category_mask(category)
        if mask is not None:
            keep = keep & mask
        everything = bool(keep.all())
        parts = [ScanPart(segment.id_start, self._vectors(segment, array),
                          None if everything else keep[span], label=str(segment.vectors_path))
                 for segment, array, span in self.store.iter_segments()]
        try:
            # A row of zeros scores exactly 0: such rows are checked, so damage never just drops an item.
            return scan_topk(queries, parts, k, exclude=exclude, tile_rows=self.chunk_rows,
                             suspect=self.store.check_rows)
        except ScoreRangeError as exc:
            raise StoreIntegrityError(exc.label, f"holds vectors that are not unit vectors (a score of "
                                                 f"{exc.value:.3g}); the file is damaged", self.store.root) from None

    def add(
        self, vectors: np.ndarray, records: Sequence[CatalogRecord], failures: Sequence[dict[str, str]] = ()
    ) -> np.ndarray:
        return self.store.append(vectors, records, failures=failures)

    def delete(self, ids: Sequence[int]) -> int:
        return self.store.delete(ids)

    def save(self) -> None:
        """Nothing to do: the store is the index, and every add or delete is committed at once."""

    def refresh(self) -> None:
        """Nothing to rebuild: every search reads the store's current segments and tombstones. Drops
        cached maps and masks of segments that are gone."""
        names = {segment.name for segment in self.store.segments}
        with self._lock:
            self._private_maps = {n: m for n, m in self._private_maps.items() if n in names}
            self._masks.clear()


class ExactBackend:
    """The ``exact`` plug-in: nothing to build beyond the store, so build and open are the same."""

    description = "exact cosine top-k over the memory-mapped store (no extra files; add/delete at once)"
    store_only = True  # nothing saved beside the store (see clothsim.index.base.StoreOnlyPlugin)

    def build(self, store: FeatureStore, **options: Any) -> ExactIndex:
        return ExactIndex(store, **options)

    def open(self, store: FeatureStore, **options: Any) -> ExactIndex:
        return ExactIndex(store, **options)
