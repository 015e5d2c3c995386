"""Exact cosine top-k over row blocks, with bounded memory and a deterministic order.

Order: higher score first; equal scores keep catalogue order (lower row first). The same rule is used
by the index, the metrics and the tests' brute-force reference, so results never depend on chunking.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

DEFAULT_CHUNK_ROWS = 16384


def _block_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of each row of ``scores`` (ties: lower column first). Returns (cols, values)."""
    n_rows, n_cols = scores.shape
    if k >= n_cols:
        cols = np.broadcast_to(np.arange(n_cols), scores.shape)
        order = np.lexsort((cols, -scores), axis=-1)
        return order, np.take_along_axis(scores, order, axis=1)
    # argpartition is linear but breaks ties arbitrarily at the k-th value; rows where a tie straddles
    # the boundary (rare with real features) are redone with a stable full sort.
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_vals = np.take_along_axis(scores, part, axis=1)
    kth = part_vals.min(axis=1, keepdims=True)
    straddle = np.flatnonzero((scores >= kth).sum(axis=1) > k)
    for row in straddle:
        part[row] = np.argsort(-scores[row], kind="stable")[:k]
        part_vals[row] = scores[row, part[row]]
    order = np.lexsort((part, -part_vals), axis=-1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_vals, order, axis=1)


def topk_over_blocks(
    queries: np.ndarray,
    blocks: Iterable[tuple[int | np.ndarray, np.ndarray]],
    k: int,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product over gallery blocks that arrive one at a time.

    Args:
        queries: ``(q, d)`` float array (L2-normalised for cosine).
        blocks: ``(start_row, block)`` pairs; ``block`` is ``(n_i, d)``; rows are numbered globally.
            Instead of ``start_row`` a block may come with an ascending int array of its rows' ids
            (a filtered or deleted-from block); the ids are then what is returned and ranked on ties.
        k: How many neighbours; fewer come back when the gallery is smaller.
        exclude: Optional ``(q,)`` global row per query to leave out (leave-one-out); ``-1`` for none.

    Returns:
        ``(rows, scores)``, each ``(q, min(k, gallery size))``; rows are global row numbers. When
        ``exclude`` names a row for some query and the gallery has at most ``k`` rows, every query
        gets ``gallery size - 1`` columns, so the result stays rectangular (a query that excluded
        nothing then loses its last neighbour only).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2:
        raise ValueError(f"queries must be 2-D (n, dim), got shape {queries.shape}")
    n_q = queries.shape[0]
    best_rows = np.zeros((n_q, 0), dtype=np.int64)
    best_vals = np.zeros((n_q, 0), dtype=np.float32)
    for start, block in blocks:
        block = np.asarray(block)
        if block.shape[0] == 0:
            continue
        if block.ndim != 2 or block.shape[1] != queries.shape[1]:
            raise ValueError(f"gallery block has shape {block.shape}, queries have dim {queries.shape[1]}")
        if isinstance(start, np.ndarray):
            block_ids = start.astype(np.int64, copy=False)
            if block_ids.shape != (block.shape[0],):
                raise ValueError(f"block ids have shape {block_ids.shape}, block has {block.shape[0]} rows")
        else:
            block_ids = np.arange(start, start + block.shape[0], dtype=np.int64)
        scores = queries @ block.astype(np.float32, copy=False).T
        if exclude is not None:
            exclude_ids = np.asarray(exclude, dtype=np.int64)
            local = np.searchsorted(block_ids, exclude_ids)
            local_clipped = np.minimum(local, block.shape[0] - 1)
            hit = np.flatnonzero(block_ids[local_clipped] == exclude_ids)
            scores[hit, local_clipped[hit]] = -np.inf
        cols, vals = _block_topk(scores, k)
        rows = np.concatenate([best_rows, block_ids[cols]], axis=1)
        vals_all = np.concatenate([best_vals, vals], axis=1)
        order = np.lexsort((rows, -vals_all), axis=-1)[:, :k]
        best_rows = np.take_along_axis(rows, order, axis=1)
        best_vals = np.take_along_axis(vals_all, order, axis=1)
    if exclude is not None and best_vals.size:
        # An excluded row can only surface when the gallery has fewer than k other rows: drop it.
        keep = np.isfinite(best_vals).all(axis=0)
        best_rows, best_vals = best_rows[:, keep], best_vals[:, keep]
    return best_rows, best_vals


def iter_row_blocks(matrix: np.ndarray, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """Split a (possibly memory-mapped) matrix into ``(start, rows)`` blocks without copying it whole."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    for start in range(0, matrix.shape[0], chunk_rows):
        yield start, matrix[start : start + chunk_rows]


def topk_cosine(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    leave_one_out: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of L2-normalised ``queries`` against ``gallery`` (see :func:`topk_over_blocks`).

    With ``leave_one_out`` the queries *are* the gallery and row ``i`` never retrieves itself.
    """
    exclude = np.arange(len(queries)) if leave_one_out else None
    if leave_one_out and len(queries) != len(gallery):
        raise ValueError("leave_one_out needs queries and gallery to be the same set")
    return topk_over_blocks(queries, iter_row_blocks(gallery, chunk_rows), k, exclude=exclude)
