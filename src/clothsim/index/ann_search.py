"""Searching an approximate or database backend without ever giving a wrong answer: masks over the
store's rows, query checks, the exact fallback that keeps "k results whenever k exist" true, and hits
re-scored against the store's own vectors so that a damaged engine file is never served.

Nothing here imports FAISS or pymilvus; each backend module imports its engine itself.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from clothsim.errors import UsageError
from clothsim.index.base import BackendIndexError, SearchHit
from clothsim.index.topk import DEFAULT_CHUNK_ROWS, topk_over_blocks

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore

#: A category filter that leaves at most this many live items is answered by the exact backend over
#: them: graph search under a narrow filter misses many of the nearest allowed items when the filter
#: excludes the query's own neighbourhood, while an exact scan of that few rows is both cheap and right.
EXACT_BELOW = 50_000


# ----- what the store holds ------------------------------------------------------------------------
def _filter_key(category: str | Sequence[str] | None) -> tuple[str, ...] | None:
    return None if category is None else (category,) if isinstance(category, str) else tuple(sorted(set(category)))


class StoreView:
    """Masks over a store's rows, recomputed only when the store grows or gains tombstones.

    ``rows`` are positions in ``store.all_ids()`` (what ``iter_blocks(row_mask=...)`` takes); ``ids``
    are catalogue ids. Thread-safe: request threads of a web server share one view.
    """

    def __init__(self, store: "FeatureStore") -> None:
        self.store = store
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._all_ids = np.zeros(0, dtype=np.int64)
        self._live = np.zeros(0, dtype=bool)
        self._codes: np.ndarray | None = None
        self._names: list[str] = []
        self._allowed: dict[tuple[str, ...], np.ndarray] = {}
        self._counts: dict[tuple[str, ...] | None, int] = {}

    def _refresh(self) -> None:
        key = (int(self.store.total_rows), int(len(self.store.deleted_ids)))
        if key == self._key:
            return
        all_ids = np.asarray(self.store.all_ids(), dtype=np.int64)
        deleted = np.asarray(self.store.deleted_ids, dtype=np.int64)
        self._all_ids = all_ids
        self._live = ~np.isin(all_ids, deleted) if deleted.size else np.ones(all_ids.shape, dtype=bool)
        self._codes, self._names, self._allowed, self._counts = None, [], {}, {}
        self._key = key

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """``(all_ids, live)``: every id and whether it is live, row for row."""
        with self._lock:
            self._refresh()
            return self._all_ids, self._live

    def next_id(self) -> int:
        ids, _ = self.snapshot()
        return int(ids[-1]) + 1 if ids.size else 0

    def _categories(self) -> tuple[np.ndarray, list[str]]:
        if self._codes is None:
            codes, names = self.store.category_codes()
            self._codes, self._names = np.asarray(codes, dtype=np.int32), list(names)
        return self._codes, self._names

    def categories(self) -> dict[str, int]:
        """Live item count per category, sorted by category."""
        with self._lock:
            self._refresh()
            codes, names = self._categories()
            live = codes[self._live]
            counts = np.bincount(live[live >= 0], minlength=len(names))  # rows without a category: not counted
        return {name: int(n) for name, n in zip(names, counts) if n}

    def allowed_rows(self, category: str | Sequence[str] | None) -> np.ndarray:
        """Boolean mask over rows: live and (when given) in one of the categories.

        Raises:
            UsageError: a category the index does not have.
        """
        with self._lock:
            self._refresh()
            return self._mask(category)

    def allowed_count(self, category: str | Sequence[str] | None) -> int:
        """How many rows :meth:`allowed_rows` allows, counted once per mask (a count over a million rows
        costs more than a small graph search)."""
        with self._lock:
            self._refresh()
            key = _filter_key(category)
            if key not in self._counts:
                self._counts[key] = int(np.count_nonzero(self._mask(category)))
            return self._counts[key]

    def _mask(self, category: str | Sequence[str] | None) -> np.ndarray:
        wanted = _filter_key(category)
        if wanted is None:
            return self._live
        if wanted not in self._allowed:
            codes, names = self._categories()
            unknown = sorted(set(wanted) - set(names))
            if unknown:
                raise UsageError(f"unknown category {unknown}; the index has {names}")
            if len(self._allowed) > 64:  # many distinct filter sets: keep memory bounded
                self._allowed.clear()
            self._allowed[wanted] = self._live & np.isin(codes, [names.index(n) for n in wanted])
        return self._allowed[wanted]

    def categories_of(self, ids: np.ndarray) -> list[str | None]:
        """Category names of ``ids`` (any rows, deleted included), from the columnar codes; ``None`` for
        a row without a category."""
        with self._lock:
            self._refresh()
            codes, names = self._categories()
            rows = np.searchsorted(self._all_ids, np.asarray(ids, dtype=np.int64))
        return [names[int(c)] if c >= 0 else None for c in codes[rows]]


def id_bitmap(ids: np.ndarray, size: int) -> np.ndarray:
    """A little-endian bitmap of ``size`` bits with the bits of ``ids`` set (FAISS ``IDSelectorBitmap``)."""
    bits = np.zeros(max(size, 1), dtype=bool)
    bits[np.asarray(ids, dtype=np.int64)] = True
    return np.packbits(bits, bitorder="little")


# ----- searching ---------------------------------------------------------------------------------
def check_queries(queries: np.ndarray, dim: int, k: int, exclude_ids: Sequence[int] | None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Queries as a C-contiguous float32 ``(q, dim)`` array and the per-query excluded ids (or ``None``).

    Raises:
        ValueError: wrong dimension, ``k`` below 1, or not one excluded id per query.
    """
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    queries = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries have dim {queries.shape[-1]}, the index holds {dim}-d vectors")
    if exclude_ids is None:
        return queries, None
    exclude = np.asarray(exclude_ids, dtype=np.int64)
    if exclude.shape != (queries.shape[0],):
        raise ValueError(f"exclude_ids needs one id per query ({queries.shape[0]}), got {exclude.shape}")
    return queries, exclude


def finish_rows(
    candidate_ids: np.ndarray,
    candidate_scores: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
    all_ids: np.ndarray | None = None,
    row_mask: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query: drop padding (-1), the excluded id and any id outside ``row_mask`` (over ``all_ids``
    rows); sort by score, then id; keep ``k``. The mask is a last guard: whatever an engine does, a
    deleted or filtered-out id is never returned."""
    rows = []
    for q in range(candidate_ids.shape[0]):
        ids = np.asarray(candidate_ids[q], dtype=np.int64)
        scores = np.asarray(candidate_scores[q], dtype=np.float32)
        keep = ids >= 0
        if exclude is not None:
            keep &= ids != exclude[q]
        if row_mask is not None and all_ids is not None:
            if all_ids.size == 0:
                keep[:] = False
            else:
                pos = np.minimum(np.searchsorted(all_ids, ids), all_ids.size - 1)
                keep &= (all_ids[pos] == ids) & row_mask[pos]
        ids, scores = ids[keep], scores[keep]
        ids, first = np.unique(ids, return_index=True)  # an engine may repeat an id (upserts)
        scores = scores[first]
        order = np.lexsort((ids, -scores))[:k]
        rows.append((ids[order], scores[order]))
    return rows


def rows_as_arrays(rows: list[tuple[np.ndarray, np.ndarray]], k: int,
                   n_queries: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ranked rows (see :func:`finish_rows`) as ``(ids, scores)`` arrays of ``k`` columns, padded with
    -1 / -inf."""
    n = len(rows) if n_queries is None else n_queries
    ids = np.full((n, k), -1, dtype=np.int64)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    for q, (row_ids, row_scores) in enumerate(rows):
        ids[q, :row_ids.size] = row_ids[:k]
        scores[q, :row_scores.size] = row_scores[:k]
    return ids, scores


def exact_hits(store: "FeatureStore", queries: np.ndarray, k: int, category: str | Sequence[str] | None,
               exclude: np.ndarray | None) -> list[list[SearchHit]]:
    """Exact top-k through the exact backend (the store's own tiled scan over the matching rows)."""
    from clothsim.index.exact import ExactIndex

    return ExactIndex(store).search(queries, k, category=category,
                                    exclude_ids=None if exclude is None else exclude.tolist())


def exact_rows(
    store: "FeatureStore",
    queries: np.ndarray,
    k: int,
    row_mask: np.ndarray,
    exclude: np.ndarray | None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top-k over the rows of ``row_mask``: the fallback when an engine returns too few."""
    if not row_mask.any():
        return [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)) for _ in range(len(queries))]
    ids, scores = topk_over_blocks(queries, store.iter_blocks(chunk_rows, row_mask), k + (exclude is not None),
                                   exclude=exclude)
    return finish_rows(ids, scores, k, exclude)


def complete_rows(
    store: "FeatureStore",
    queries: np.ndarray,
    k: int,
    rows: list[tuple[np.ndarray, np.ndarray]],
    row_mask: np.ndarray,
    all_ids: np.ndarray,
    exclude: np.ndarray | None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Redo exactly the queries that came back with fewer than ``min(k, matching live items)``.

    Returns the rows and how many queries were redone. This is what makes "exactly k results
    whenever k live matching items exist" hold for every engine, however aggressive its pruning.
    """
    n_allowed = None  # counted only when some row is short: a count over every row is not free
    short = []
    for q, (ids, _) in enumerate(rows):
        if ids.size >= k:
            continue
        if n_allowed is None:
            n_allowed = int(np.count_nonzero(row_mask))
        available = n_allowed
        if exclude is not None and exclude[q] >= 0:
            pos = np.searchsorted(all_ids, exclude[q])
            if pos < all_ids.size and all_ids[pos] == exclude[q] and row_mask[pos]:
                available -= 1
        if ids.size < min(k, available):
            short.append(q)
    if short:
        sub_exclude = None if exclude is None else exclude[short]
        for q, row in zip(short, exact_rows(store, queries[short], k, row_mask, sub_exclude)):
            rows[q] = row
    return rows, len(short)


def to_hits(store: "FeatureStore", rows: list[tuple[np.ndarray, np.ndarray]]) -> list[list[SearchHit]]:
    """Ranked :class:`SearchHit` lists; records are made only for the hits returned."""
    return [
        [SearchHit(rank + 1, int(i), float(s), record)
         for rank, (i, s, record) in enumerate(zip(ids, scores, store.records_for(ids)))]
        for ids, scores in rows
    ]


#: How far a backend's score for a hit may be from the same item's score against its stored vector when
#: the engine holds exact copies of the vectors: two float32 summation orders differ by about 1e-7.
SCORE_AGREEMENT = 1e-3
#: Where an engine's scores are approximate (product-quantized codes), one beyond this many times the
#: query's norm is still impossible: codes of unit vectors reconstruct to about unit length, while a
#: damaged file gives scores many orders of magnitude off.
APPROXIMATE_SCORE_LIMIT = 4.0


def checked_hits(store: "FeatureStore", queries: np.ndarray, rows: list[tuple[np.ndarray, np.ndarray]],
                 source: str, hint: str, engine_exact: bool = True) -> list[list[SearchHit]]:
    """What every approximate or database backend returns goes through here, so that damage is never served.

    Per query: scores no unit vector can give are refused (the engine's file ``source`` is damaged); every
    hit is re-scored against its vector in the store, whose rows are checked on the way
    (:meth:`FeatureStore.check_rows`); where the engine holds exact copies (``engine_exact``), a score
    that disagrees with the store's is refused too. Hits are then ranked by the store's scores.

    Raises:
        BackendIndexError: the engine gave an impossible or disagreeing score (the message says how to
            rebuild it, ``hint``).
        StoreIntegrityError: a hit's stored vector is damaged.
    """
    out = []
    for q, (ids, scores) in enumerate(rows):
        ids = np.asarray(ids, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        if not ids.size:
            out.append((ids, scores))
            continue
        query = queries[q]
        norm = float(np.linalg.norm(query))
        limit = norm * (1.02 if engine_exact else APPROXIMATE_SCORE_LIMIT) + 1e-3
        bad = ~(np.abs(scores) <= limit)  # NaN included
        if bad.any():
            raise BackendIndexError(f"{source} gave a score of {float(scores[bad][0]):.3g} for item "
                                    f"{int(ids[bad][0])}, which no unit vector can give: it is damaged; {hint}")
        store.check_rows(ids)
        exact = (store.vectors_for(ids) @ query).astype(np.float32)
        if engine_exact:
            off = np.abs(exact - scores) > SCORE_AGREEMENT * max(norm, 1.0)
            if off.any():
                i = int(np.flatnonzero(off)[0])
                raise BackendIndexError(f"{source} gave item {int(ids[i])} a score of {float(scores[i]):.6g}, its "
                                        f"vector in the store gives {float(exact[i]):.6g}: the index is damaged; "
                                        f"{hint}")
        order = np.lexsort((ids, -exact))
        out.append((ids[order], exact[order]))
    return to_hits(store, out)


def rescore_exactly(store: "FeatureStore", queries: np.ndarray, ids: np.ndarray,
                    all_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, exact scores)`` of an engine's ``(n_queries, n)`` shortlist, re-scored with the store's
    vectors (read row by row from the memory-mapped segments, so a shortlist costs only its rows).

    An id that is not in the store (``-1`` padding, or a row a repair dropped) becomes ``-1`` with score
    ``-inf``; deleted ids are scored and left to the caller's row mask.
    """
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.full(ids.shape, -np.inf, dtype=np.float32)
    if all_ids.size == 0:
        return np.full(ids.shape, -1, dtype=np.int64), scores
    pos = np.minimum(np.searchsorted(all_ids, ids), all_ids.size - 1)
    known = (ids >= 0) & (all_ids[pos] == ids)
    for q in range(ids.shape[0]):
        cols = np.flatnonzero(known[q])
        if cols.size:
            scores[q, cols] = store.vectors_for(ids[q, cols]) @ queries[q]
    return np.where(known, ids, -1), scores


def iter_live_blocks(store: "FeatureStore", row_mask: np.ndarray | None, chunk_rows: int
                     ) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """``(ids, float32 C-contiguous vectors)`` blocks of live rows (for adding to an engine)."""
    for ids, block in store.iter_blocks(chunk_rows, row_mask):
        yield np.asarray(ids, dtype=np.int64), np.ascontiguousarray(block, dtype=np.float32)
