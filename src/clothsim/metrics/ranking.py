"""Rank a gallery for each query by cosine similarity, in bounded memory.

The top-k itself is :mod:`clothsim.index.topk` (exact, ties to the lower gallery row); this module
only tiles the queries and normalises rows block by block, so neither the full score matrix nor a
normalised copy of the gallery is ever held.
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np

from clothsim.index.topk import DEFAULT_CHUNK_ROWS, iter_row_blocks, topk_over_blocks
from clothsim.metrics._checks import check_k

logger = logging.getLogger(__name__)

#: Queries scored at once; with the default gallery chunk the score block is 1024 x 16384 float32 (64 MiB).
DEFAULT_QUERY_CHUNK_ROWS = 1024


def _as_matrix(name: str, vectors: np.ndarray) -> np.ndarray:
    # np.asarray keeps a memory map a memory map; rows are read block by block later.
    matrix = np.asarray(vectors)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {matrix.shape}")
    if matrix.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numeric, got dtype {matrix.dtype}")
    return matrix


def _normalised(name: str, start: int, block: np.ndarray, normalize: bool) -> np.ndarray:
    """Rows of ``block`` as float32, L2-normalised (zero rows stay zero) when asked."""
    block = np.asarray(block, dtype=np.float32)
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        bad = start + int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{name}[{bad}] has a non-finite value (NaN or inf)")
    if not normalize:
        return block
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.maximum(norms, np.float32(1e-12))


def _count_zero_rows(matrix: np.ndarray, chunk_rows: int) -> int:
    return sum(int((~block.any(axis=1)).sum()) for _, block in iter_row_blocks(matrix, chunk_rows))


def rank(
    query_vectors: np.ndarray,
    gallery_vectors: np.ndarray | None,
    k: int,
    leave_one_out: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    *,
    query_chunk_rows: int = DEFAULT_QUERY_CHUNK_ROWS,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` gallery rows most cosine-similar to each query, best first.

    Args:
        query_vectors: ``(q, d)`` query embeddings.
        gallery_vectors: ``(n, d)`` gallery embeddings (may be a memory map); ``None`` with
            ``leave_one_out`` means "the queries are the gallery".
        k: Neighbours per query; fewer come back when the gallery is smaller.
        leave_one_out: The queries are the gallery; row ``i`` never retrieves itself (identical
            copies at other rows still count as neighbours).
        chunk_rows: Gallery rows scored at a time.
        query_chunk_rows: Queries scored at a time; memory is about
            ``query_chunk_rows * chunk_rows * 16`` bytes, whatever ``q`` and ``n``.
        normalize: L2-normalise rows first (cosine). Pass ``False`` for already normalised vectors
            or to rank by raw dot product.

    Returns:
        ``(rows, scores)``: int64 gallery row numbers and float32 similarities, each of shape
        ``(q, min(k, n))``, or ``(q, min(k, n - 1))`` with ``leave_one_out``. Equal scores keep
        gallery order (lower row first), so the result does not depend on the chunk sizes.

    Raises:
        ValueError: On bad shapes, ``k``/chunk sizes below 1, or non-finite values.
    """
    k = check_k("k", k)
    chunk_rows = check_k("chunk_rows", chunk_rows)
    query_chunk_rows = check_k("query_chunk_rows", query_chunk_rows)
    queries = _as_matrix("query_vectors", query_vectors)
    if gallery_vectors is None:
        if not leave_one_out:
            raise ValueError("gallery_vectors is None: pass a gallery, or set leave_one_out=True")
        gallery = queries
    else:
        gallery = _as_matrix("gallery_vectors", gallery_vectors)
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query_vectors have dim {queries.shape[1]} but gallery_vectors have dim {gallery.shape[1]}")
    if leave_one_out and queries.shape[0] != gallery.shape[0]:
        raise ValueError(
            f"leave_one_out needs the queries to be the gallery, got {queries.shape[0]} queries "
            f"and {gallery.shape[0]} gallery rows"
        )
    if normalize:
        zero = _count_zero_rows(gallery, chunk_rows)
        if zero:
            logger.warning("%d gallery rows are all zeros; they score 0 against every query", zero)

    def gallery_blocks() -> Iterator[tuple[int, np.ndarray]]:
        for start, block in iter_row_blocks(gallery, chunk_rows):
            yield start, _normalised("gallery_vectors", start, block, normalize)

    n_queries = queries.shape[0]
    row_parts: list[np.ndarray] = []
    score_parts: list[np.ndarray] = []
    # range(0, 0) would skip the call entirely; one empty batch still gives the right column count.
    for start in range(0, max(n_queries, 1), query_chunk_rows):
        stop = min(start + query_chunk_rows, n_queries)
        batch = _normalised("query_vectors", start, queries[start:stop], normalize)
        exclude = np.arange(start, stop) if leave_one_out else None
        rows, scores = topk_over_blocks(batch, gallery_blocks(), k, exclude=exclude)
        row_parts.append(rows)
        score_parts.append(scores)
    rows = np.concatenate(row_parts, axis=0)
    scores = np.concatenate(score_parts, axis=0)
    logger.debug("ranked %d queries against %d gallery rows, k=%d", n_queries, gallery.shape[0], k)
    return rows, scores
