"""Exact cosine top-k over row blocks, with bounded memory and a deterministic order.

Order: higher score first; equal scores keep catalogue order (lower row first). The same rule is used
by the index, the metrics and the tests' brute-force reference, so results never depend on chunking.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)

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


# ----- exact search at the memory wall --------------------------------------------------------------
#: Rows per tile for float32 galleries: scores and the row block stay small next to the caches.
TILE_ROWS = 4096
#: Rows per tile for the half-precision first pass over float16 galleries (one torch call each, where
#: the process has torch loaded).
HALF_TILE_ROWS = 65536
#: Bound on how far the half-precision first pass may be from the exact float32 score, for a unit query
#: (fp16 rounding of the query and of the result, plus fp32 accumulation); the window is twice this.
HALF_PASS_ERROR = 1.5e-3
#: Below this fraction of rows kept in a tile, the kept rows are gathered instead of scoring them all.
GATHER_BELOW = 0.25
_SENTINEL = np.iinfo(np.int64).max


class ScoreRangeError(ValueError):
    """A score no unit vector can give (NaN, infinite, or beyond the query's norm): the gallery rows in
    ``label`` (a segment file) are damaged."""

    def __init__(self, label: str, value: float) -> None:
        super().__init__(f"{label or 'the gallery'}: a score of {value!r} against a query of known norm; the "
                         "stored vectors are damaged")
        self.label = label
        self.value = value


class ScanPart:
    """A contiguous run of gallery rows for :func:`scan_topk`.

    Args:
        id_start: Id of the first row; row ``i`` has id ``id_start + i``.
        vectors: ``(n, d)`` float32 or float16, typically a memory-mapped segment (only read).
        keep: Optional ``(n,)`` boolean mask; rows where it is ``False`` never come back.
        label: What errors name (the segment's file).
    """

    __slots__ = ("id_start", "vectors", "keep", "label")

    def __init__(self, id_start: int, vectors: np.ndarray, keep: np.ndarray | None = None, label: str = "") -> None:
        self.id_start = int(id_start)
        self.vectors = vectors
        self.keep = keep
        self.label = label


class _RunningTopK:
    """Per-query best ``k`` so far as fixed-width arrays (padding: score -inf, id sentinel), best first."""

    def __init__(self, n_queries: int, k: int) -> None:
        self.k = k
        self.ids = np.full((n_queries, k), _SENTINEL, dtype=np.int64)
        self.vals = np.full((n_queries, k), -np.inf, dtype=np.float32)

    def threshold(self) -> np.ndarray:
        """Each query's k-th best score so far (-inf until it has k)."""
        return self.vals[:, -1]

    def merge(self, cand_q: np.ndarray, cand_ids: np.ndarray, cand_vals: np.ndarray) -> None:
        """Fold candidates (query row, id, score) in; order is (-score, id), as everywhere."""
        if cand_q.size == 0:
            return
        n_q, k = self.ids.shape
        all_q = np.concatenate([np.repeat(np.arange(n_q), k), cand_q])
        all_ids = np.concatenate([self.ids.ravel(), cand_ids])
        all_vals = np.concatenate([self.vals.ravel(), cand_vals.astype(np.float32, copy=False)])
        order = np.lexsort((all_ids, -all_vals, all_q))
        grouped = all_q[order]
        rank = np.arange(grouped.size) - np.searchsorted(grouped, np.arange(n_q))[grouped]
        chosen = order[rank < k]
        # Every query keeps exactly k entries (its padding included), so the result is rectangular.
        self.ids = all_ids[chosen].reshape(n_q, k)
        self.vals = all_vals[chosen].reshape(n_q, k)

    def push(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """Offer a tile of scores ``(q, n)`` (``-inf`` where masked) for rows ``ids`` (ascending)."""
        thr = self.threshold()
        if np.isneginf(thr).any():
            cols, vals = _block_topk(scores, self.k)
            n_q = scores.shape[0]
            finite = np.isfinite(vals)
            self.merge(np.repeat(np.arange(n_q), cols.shape[1])[finite.ravel()], ids[cols][finite],
                       vals[finite])
            return
        # Strictly above the k-th best: tiles arrive in ascending id order, so an equal score loses the tie.
        hit_q, hit_col = np.nonzero(scores > thr[:, None])
        if hit_q.size:
            self.merge(hit_q, ids[hit_col], scores[hit_q, hit_col])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        finite = np.isfinite(self.vals)
        width = int(finite.sum(axis=1).min()) if finite.size else 0
        return self.ids[:, :width], self.vals[:, :width]


def _check_range(scores: np.ndarray, limit: np.ndarray, label: str) -> None:
    top = scores.max(axis=1)
    low = scores.min(axis=1)
    ok = (top <= limit) & (low >= -limit)  # NaN fails both comparisons
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        bad = top[row] if not top[row] <= limit[row] else low[row]
        raise ScoreRangeError(label, float(bad))


def scan_topk(
    queries: np.ndarray,
    parts: Sequence[ScanPart],
    k: int,
    *,
    exclude: np.ndarray | None = None,
    tile_rows: int = TILE_ROWS,
    suspect: Callable[[np.ndarray], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product over gallery parts, reading each row once, in tiles.

    float32 parts are multiplied in place (no copy); float16 parts are converted tile by tile, or, for a
    single query in a process that has torch loaded, scored by a half-precision first pass whose
    candidates are then rescored exactly in float32, so the result is the exact float32 top-k either way.
    Masked rows cost nothing extra when few are kept (the kept ones are gathered). Scores that unit
    vectors cannot give raise :class:`ScoreRangeError` naming the part: damage is never ranked.

    Args:
        queries: ``(q, d)`` float array.
        parts: Gallery runs in ascending id order.
        k: How many neighbours; fewer come back when fewer rows are eligible.
        exclude: Optional ``(q,)`` id per query to leave out, or ``-1``.
        tile_rows: Rows per tile for float32 parts.
        suspect: Called with the ids of rows that scored exactly 0 against every query, which a row of
            zeros (a damaged one, that would otherwise drop out of every result silently) does; it may
            check them and raise. A real row scores exactly 0 rarely, so this costs nearly nothing.

    Returns:
        ``(ids, scores)``, each ``(q, m)``, best first, ties to the lower id; ``m`` is the smallest number
        of eligible rows any query has, at most ``k``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if tile_rows < 1:
        raise ValueError(f"tile_rows must be at least 1, got {tile_rows}")
    queries = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
    if queries.ndim != 2:
        raise ValueError(f"queries must be 2-D (n, dim), got shape {queries.shape}")
    n_q, dim = queries.shape
    for part in parts:
        if part.vectors.ndim != 2 or part.vectors.shape[1] != dim:
            raise ValueError(f"gallery part has shape {part.vectors.shape}, queries have dim {dim}")
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (n_q,):
            raise ValueError(f"exclude needs one id per query ({n_q}), got {exclude.shape}")
    # Stored rows are unit vectors (float16 within its rounding): no score can exceed the query's norm.
    limit = np.linalg.norm(queries, axis=1) * 1.02 + 1e-3
    if n_q == 1 and parts and all(p.vectors.dtype == np.float16 for p in parts) and _half_pass_available():
        found = _scan_half_single(queries, parts, k, exclude, limit, suspect)
        if found is not None:
            return found
    best = _RunningTopK(n_q, k)
    converter = _HalfConverter(tile_rows, dim) if any(p.vectors.dtype == np.float16 for p in parts) else None
    for part, lo, hi, keep, local in _live_tiles(parts, tile_rows):
        ids = np.arange(part.id_start + lo, part.id_start + hi, dtype=np.int64)
        if local is not None:
            block = np.asarray(part.vectors[lo + local], dtype=np.float32)
            ids, keep = ids[local], None
        elif part.vectors.dtype == np.float16:
            block = converter.convert(part.vectors[lo:hi])
        else:
            block = np.asarray(part.vectors[lo:hi], dtype=np.float32)
        with np.errstate(invalid="ignore", over="ignore"):  # damaged rows are reported just below
            scores = converter.matmul(queries, block) if converter is not None else queries @ block.T
        _check_range(scores, limit, part.label)  # before masking: damage in any row read is reported
        if suspect is not None:
            _report_zero_rows(scores, ids, suspect)
        if keep is not None and not keep.all():
            scores[:, ~keep] = -np.inf
        if exclude is not None:
            _exclude_sparse(scores, ids, exclude)
        best.push(scores, ids)
    return best.result()


def _report_zero_rows(scores: np.ndarray, ids: np.ndarray, suspect: Callable[[np.ndarray], None]) -> None:
    if np.count_nonzero(scores) == scores.size:  # nearly always: no score is exactly 0
        return
    zero = ~scores.any(axis=0)
    if zero.any():
        suspect(ids[zero])


def _live_tiles(parts: Sequence[ScanPart], tile_rows: int
                ) -> Iterator[tuple[ScanPart, int, int, np.ndarray | None, np.ndarray | None]]:
    """``(part, lo, hi, keep, local)`` for every tile of ``tile_rows`` rows holding a live row: ``keep``
    is the tile's mask (``None``: all live) and ``local`` the live rows' offsets when so few are live
    that gathering them beats reading the whole tile (``None`` otherwise)."""
    for part in parts:
        rows = part.vectors.shape[0]
        for lo in range(0, rows, tile_rows):
            hi = min(rows, lo + tile_rows)
            keep = part.keep[lo:hi] if part.keep is not None else None
            n_keep = int(keep.sum()) if keep is not None else hi - lo
            if n_keep == 0:
                continue
            sparse = keep is not None and n_keep < GATHER_BELOW * (hi - lo)
            yield part, lo, hi, keep, np.flatnonzero(keep) if sparse else None


def _exclude_sparse(scores: np.ndarray, ids: np.ndarray, exclude: np.ndarray) -> None:
    # ids are ascending but may be gathered (not contiguous): find each query's excluded id among them.
    local = np.searchsorted(ids, exclude)
    local_c = np.minimum(local, ids.size - 1)
    hit = np.flatnonzero(ids[local_c] == exclude)
    scores[hit, local_c[hit]] = -np.inf


def _loaded_torch() -> Any:
    """torch when this process has already imported it, else ``None``. Search never imports torch (the
    core runs without it), but where a process has it loaded anyway (a script that also trains), its
    vectorised float16 conversion is several times faster than numpy's on CPUs without native float16
    casts (docs/benchmarks.md)."""
    return sys.modules.get("torch")


class _HalfConverter:
    """float16 tiles to float32 in a reused buffer. With torch loaded, the conversion and the product go
    through torch, so one thread pool does both (OpenMP and OpenBLAS workers fight when alternated);
    otherwise numpy does both."""

    def __init__(self, tile_rows: int, dim: int) -> None:
        self._torch = _loaded_torch()
        if self._torch is not None:
            self._buffer = self._torch.empty((tile_rows, dim), dtype=self._torch.float32)
        else:
            self._array = np.empty((tile_rows, dim), dtype=np.float32)

    def convert(self, block: np.ndarray) -> np.ndarray:
        if self._torch is None:
            out = self._array[: block.shape[0]]
            np.copyto(out, block)
            return out
        out = self._buffer[: block.shape[0]]
        out.copy_(self._torch.from_numpy(_writable(block)))
        return out.numpy()

    def matmul(self, queries: np.ndarray, block: np.ndarray) -> np.ndarray:
        torch = self._torch
        if torch is None:
            return queries @ block.T
        return torch.mm(torch.from_numpy(queries), torch.from_numpy(block).T).numpy()


def _writable(block: np.ndarray) -> np.ndarray:
    # torch.from_numpy warns on read-only arrays; a private copy-on-write mapping (mode "c") is writable
    # without copying, and is only ever read here.
    return block if block.flags.writeable else np.array(block)


_HALF_PASS_OK: bool | None = None


def _half_pass_available() -> bool:
    """Whether torch's half-precision matrix-vector product is within :data:`HALF_PASS_ERROR` (it
    accumulates in float32 unless a build or setting says otherwise); checked once per process."""
    global _HALF_PASS_OK
    torch = _loaded_torch()
    if torch is None:
        return False  # asked again later: the process may load torch meanwhile
    if _HALF_PASS_OK is None:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(2048, 1280)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x[:8] = x[8]  # include scores near 1, where float16 rounding is coarsest
        q = x[8] + 0.01 * rng.normal(size=1280).astype(np.float32)
        q /= np.linalg.norm(q)
        half = x.astype(np.float16)
        approx = torch.mv(torch.from_numpy(half), torch.from_numpy(q).half()).float().numpy()
        exact = half.astype(np.float32) @ q
        _HALF_PASS_OK = bool(np.abs(approx - exact).max() <= HALF_PASS_ERROR / 2)
    return _HALF_PASS_OK


def _scan_half_single(queries: np.ndarray, parts: Sequence[ScanPart], k: int, exclude: np.ndarray | None,
                      limit: np.ndarray, suspect: Callable[[np.ndarray], None] | None = None
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """One query over float16 parts: a half-precision pass at memory speed keeps every row within twice
    :data:`HALF_PASS_ERROR` of the running k-th best, then those are rescored exactly. Returns ``None``
    when the pass was less precise than promised (the caller then scans exactly)."""
    torch = _loaded_torch()
    scale = max(1.0, float(np.linalg.norm(queries[0])))
    window = 2 * HALF_PASS_ERROR * scale
    query_half = torch.from_numpy(queries[0]).half()
    top = np.full(k, -np.inf, dtype=np.float32)  # best k approximate scores so far
    pool_ids: list[np.ndarray] = []
    pool_vals: list[np.ndarray] = []
    excluded = int(exclude[0]) if exclude is not None else -1
    for part, lo, hi, keep, local in _live_tiles(parts, HALF_TILE_ROWS):
        if local is not None:
            with np.errstate(invalid="ignore", over="ignore"):
                approx = np.asarray(part.vectors[lo + local], dtype=np.float32) @ queries[0]  # exact already
            ids = part.id_start + lo + local
            _check_range(approx[None, :], limit, part.label)
            if suspect is not None:
                _report_zero_rows(approx[None, :], ids, suspect)
        else:
            tile = torch.from_numpy(_writable(part.vectors[lo:hi]))
            approx = torch.mv(tile, query_half).float().numpy()
            ids = np.arange(part.id_start + lo, part.id_start + hi, dtype=np.int64)
            _check_range(approx[None, :], limit, part.label)
            if suspect is not None:
                _report_zero_rows(approx[None, :], ids, suspect)
            if keep is not None:
                approx[~keep] = -np.inf
        if excluded >= 0:
            approx[ids == excluded] = -np.inf
        if approx.size >= k:
            tile_top = np.partition(approx, approx.size - k)[approx.size - k:]
        else:
            tile_top = approx
        top = np.sort(np.concatenate([top, tile_top]))[-k:]
        near = np.isfinite(approx) & (approx >= top[0] - window)
        if near.any():
            pool_ids.append(ids[near])
            pool_vals.append(approx[near])
    if not pool_ids:
        return np.zeros((1, 0), dtype=np.int64), np.zeros((1, 0), dtype=np.float32)
    ids = np.concatenate(pool_ids)
    approx = np.concatenate(pool_vals)
    keep_pool = np.isfinite(approx) & (approx >= top[0] - window)
    ids, approx = ids[keep_pool], approx[keep_pool]
    exact = _gather_scores(queries[0], parts, ids)
    if ids.size and np.abs(exact - approx).max() > HALF_PASS_ERROR * scale:
        logger.warning("half-precision first pass was off by %.2g (more than %.2g); scanning exactly",
                       float(np.abs(exact - approx).max()), HALF_PASS_ERROR * scale)
        return None
    order = np.lexsort((ids, -exact))[:k]
    return ids[order][None, :], exact[order][None, :].astype(np.float32)


def _gather_scores(query: np.ndarray, parts: Sequence[ScanPart], ids: np.ndarray) -> np.ndarray:
    """Exact float32 scores of the rows ``ids`` (any order) against one query."""
    scores = np.empty(ids.size, dtype=np.float32)
    for part in parts:
        inside = (ids >= part.id_start) & (ids < part.id_start + part.vectors.shape[0])
        if inside.any():
            where = np.flatnonzero(inside)
            rows = np.asarray(part.vectors[np.sort(ids[where]) - part.id_start], dtype=np.float64)
            order = np.argsort(ids[where], kind="stable")
            # Row by row in float64 (einsum, not BLAS, whose rounding depends on a row's position in the
            # block): identical rows get identical scores, so their tie goes to the lower id.
            scores[where[order]] = np.einsum("ij,j->i", rows, query.astype(np.float64))
    return scores
