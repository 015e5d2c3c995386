"""The candidate pairs of a duplicate search: every live item's nearest neighbours above a threshold,
found through the index's own backend, a block of items at a time.

Memory holds one block of query vectors and the pairs kept so far (three numbers a pair), never an N x N
matrix. Each finished block is written to a work folder inside the index, so a run that is stopped
resumes where it was; the folder is named by what decides the pairs (the store's state, the backend, k
and the threshold), so a changed index or setting never reuses old pairs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from clothsim.features.store.format import NPY_ERRORS
from clothsim.fileio import atomic_path, write_json
from clothsim.index.base import NeighbourSearch

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore
    from clothsim.index.base import IndexBackend

logger = logging.getLogger(__name__)

WORK_DIR = "duplicates-work"
BLOCK_ROWS = 4096
#: How far below the threshold an engine's own score may be and its pair still be scored exactly.
ENGINE_SLACK = 0.02


@dataclass
class Pairs:
    """Candidate pairs ``(a, b)`` with ``a < b`` and their cosine, each pair once, best first."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return int(self.a.size)


def neighbour_source(store: "FeatureStore", backend: "IndexBackend") -> tuple[Any, str]:
    """What answers the neighbour queries: the backend, or, when it cannot give neighbours by id, the
    exact scan of the store (said in the returned note)."""
    if isinstance(backend, NeighbourSearch):
        return backend, f"neighbours from the {getattr(backend, 'name', 'index')} backend"
    from clothsim.index.exact import ExactIndex

    name = getattr(backend, "name", type(backend).__name__)
    logger.warning("the %s backend cannot return neighbours by id; scanning the store exactly instead", name)
    return ExactIndex(store), f"the {name} backend cannot return neighbours by id: exact scan of the store"


def candidate_pairs(store: "FeatureStore", backend: "IndexBackend", threshold: float, k: int, *,
                    block_rows: int | None = None, progress: bool = True) -> tuple[Pairs, str]:
    """Pairs of live items whose cosine is at least ``threshold``, among each item's ``k`` nearest.

    Returns the pairs and a note saying what searched. Resumable: blocks done by an earlier, stopped run
    over the same index state and settings are read back instead of searched again.
    """
    block_rows = block_rows or BLOCK_ROWS
    source, note = neighbour_source(store, backend)
    ids = store.live_ids()
    work = _work_folder(store, getattr(backend, "name", "exact"), threshold, k, block_rows)
    parts: list[np.ndarray] = []
    starts = range(0, ids.size, block_rows)
    with tqdm(total=ids.size, unit="item", desc="nearest neighbours", disable=not progress) as bar:
        for number, start in enumerate(starts):
            block_file = work / f"block-{number:06d}.npy"
            block = _read_block(block_file)
            if block is None:
                block = _search_block(store, source, ids[start:start + block_rows], k, threshold)
                with atomic_path(block_file) as tmp, open(tmp, "wb") as handle:
                    np.save(handle, block)
            parts.append(block)
            bar.update(min(block_rows, ids.size - start))
    merged = np.concatenate(parts) if parts else np.zeros((0, 3))
    pairs = _unique_pairs(merged)
    return pairs, note


def _search_block(store: "FeatureStore", source: Any, block_ids: np.ndarray, k: int, threshold: float) -> np.ndarray:
    """``(query id, neighbour id, cosine)`` rows of one block's pairs at or above ``threshold``.

    An approximate backend only proposes the pairs: each is scored again from the store's vectors, and
    the rows it is made of are checked against their checksums, so damage or an engine's rounding never
    makes a pair.
    """
    queries = store.vectors_for(block_ids)
    found, scores = source.neighbours(queries, k, exclude_ids=block_ids)
    # A little below the threshold: a pair the engine scored just under it may score at it exactly.
    rows, cols = np.nonzero((found >= 0) & (scores >= threshold - ENGINE_SLACK))
    if rows.size == 0:
        return np.zeros((0, 3))
    partners = found[rows, cols]
    store.check_rows(np.union1d(block_ids, partners))
    exact = np.einsum("ij,ij->i", queries[rows].astype(np.float64),
                      store.vectors_for(partners).astype(np.float64))
    keep = exact >= threshold
    return np.stack([block_ids[rows[keep]].astype(np.float64), partners[keep].astype(np.float64), exact[keep]],
                    axis=1)


def finish(store: "FeatureStore") -> None:
    """Remove the work folders once their pairs are used (a later run starts afresh)."""
    shutil.rmtree(store.root / WORK_DIR, ignore_errors=True)


def _unique_pairs(rows: np.ndarray) -> Pairs:
    if rows.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Pairs(empty, empty.copy(), np.zeros(0, dtype=np.float32))
    a, b = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    score = rows[:, 2].astype(np.float32)
    # Each pair once (found from both ends), keeping its best score; then best first, ties by ids.
    order = np.lexsort((-score, hi, lo))
    lo, hi, score = lo[order], hi[order], score[order]
    first = np.ones(lo.size, dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    lo, hi, score = lo[first], hi[first], score[first]
    order = np.lexsort((hi, lo, -score))
    return Pairs(lo[order], hi[order], score[order])


def _work_folder(store: "FeatureStore", backend: str, threshold: float, k: int, block_rows: int) -> Path:
    # The store's data files (with their checksums) and tombstones name its state exactly.
    state = {"segments": store.manifest.get("segments"), "tombstones": store.manifest.get("tombstones"),
             "backend": backend, "threshold": round(float(threshold), 6), "k": k, "block_rows": block_rows}
    key = hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]
    root = store.root / WORK_DIR
    folder = root / key
    if not folder.is_dir():
        shutil.rmtree(root, ignore_errors=True)  # pairs of another state or setting are of no use
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "settings.json", state)
    return folder


def _read_block(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        block = np.load(path, allow_pickle=False)
    except NPY_ERRORS as exc:  # a damaged header can raise TokenError/SyntaxError too: re-search, never crash
        logger.info("re-searching %s (%s)", path.name, exc)
        return None
    return block if block.ndim == 2 and block.shape[1] == 3 else None
