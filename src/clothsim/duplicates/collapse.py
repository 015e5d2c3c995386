"""Searches that see through copies: one result per duplicate group, and a new photo checked against the
catalogue.

A collapsed search takes more candidates than asked for and keeps a hit only if it is not a copy of a
better one: in the same group of the last duplicate search kept in the index, or (for items added since,
or an index never searched for duplicates) at least the threshold from a hit already kept. Each kept hit
says how many catalogue items it stands for (``group_size``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from clothsim.duplicates.finder import recorded_groups, recorded_threshold
from clothsim.index.base import SearchHit

if TYPE_CHECKING:
    from clothsim.similarity_index import SimilarityIndex

#: Candidates taken per result asked for, at first; doubled while copies leave too few.
CANDIDATES_PER_RESULT = 4


def collapsed_search(index: "SimilarityIndex", query: np.ndarray, k: int,
                     category: str | Sequence[str] | None = None, threshold: float | None = None,
                     exclude_id: int | None = None) -> list[SearchHit]:
    """The ``k`` best hits for one query vector, one per duplicate group, each with its ``group_size``."""
    store = index.store
    if threshold is None:
        threshold, _ = recorded_threshold(store)
    groups = recorded_groups(store)
    group_of = groups.group_of if groups is not None else {}
    sizes = groups.sizes if groups is not None else {}
    available = len(index)
    wanted = k * CANDIDATES_PER_RESULT
    while True:
        exclude = None if exclude_id is None else [exclude_id]
        hits = index.backend.search(query[None, :], min(wanted, available), category=category,
                                    exclude_ids=exclude)[0]
        kept, counts = _collapse(hits, store.vectors_for, threshold, group_of, k)
        if len(kept) >= k or len(hits) >= available - (exclude_id is not None) or len(hits) < min(wanted, available):
            break
        wanted *= 2
    out = []
    for rank, hit in enumerate(kept[:k], start=1):
        group = group_of.get(hit.id)
        size = max(sizes.get(group, 1), counts[hit.id]) if group is not None else counts[hit.id]
        out.append(replace(hit, rank=rank, group_size=size))
    return out


def _collapse(hits: list[SearchHit], vectors_of, threshold: float, group_of: dict[int, int],
              k: int) -> tuple[list[SearchHit], dict[int, int]]:
    kept: list[SearchHit] = []
    counts: dict[int, int] = {}
    kept_groups: dict[int, int] = {}  # group -> the kept hit standing for it
    if not hits:
        return kept, counts
    vectors = vectors_of(np.asarray([h.id for h in hits], dtype=np.int64))
    kept_rows: list[int] = []
    for row, hit in enumerate(hits):
        group = group_of.get(hit.id)
        if group is not None and group in kept_groups:
            counts[kept_groups[group]] += 1
            continue
        if kept_rows:
            alike = vectors[kept_rows] @ vectors[row]
            best = int(np.argmax(alike))
            if alike[best] >= threshold:
                counts[kept[best].id] += 1
                continue
        if len(kept) == k:
            continue  # only counting copies of the hits already kept from here on
        kept.append(hit)
        kept_rows.append(row)
        counts[hit.id] = 1
        if group is not None:
            kept_groups[group] = hit.id
    return kept, counts


@dataclass
class PhotoCheck:
    """Whether a photo already has near-duplicates in the catalogue: the items at least ``threshold``
    from it, best first."""

    photo: str
    copies: list[SearchHit]
    threshold: float


def check_photos(index: "SimilarityIndex", photos: Sequence[str], threshold: float | None = None,
                 limit: int = 20) -> list[PhotoCheck]:
    """For each photo, the catalogue items it is a near-duplicate of (at most ``limit``)."""
    if threshold is None:
        threshold, _ = recorded_threshold(index.store)
    found = copies_of_vectors(index, index.embed(list(photos)), threshold, limit)
    return [PhotoCheck(str(photo), hits, threshold) for photo, hits in zip(photos, found)]


def copies_of_vectors(index: "SimilarityIndex", vectors: np.ndarray, threshold: float,
                      limit: int) -> list[list[SearchHit]]:
    """For each query vector, the catalogue items at least ``threshold`` from it (at most ``limit``,
    best first)."""
    if len(index) == 0:
        return [[] for _ in range(len(vectors))]
    results = index.backend.search(vectors, min(limit, len(index)))
    return [[h for h in hits if h.score >= threshold] for hits in results]


def copies_among(index: "SimilarityIndex", ids: Sequence[int], threshold: float | None = None,
                 limit: int = 5) -> dict[int, list[SearchHit]]:
    """For items already in the index (e.g. the ones a sync just added), the other items they are
    near-duplicates of; items without any are left out."""
    if threshold is None:
        threshold, _ = recorded_threshold(index.store)
    found: dict[int, list[SearchHit]] = {}
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), 1024):
        block = ids[start:start + 1024]
        results = index.backend.search(index.store.vectors_for(np.asarray(block)), limit, exclude_ids=block)
        for item, hits in zip(block, results):
            alike = [h for h in hits if h.score >= threshold]
            if alike:
                found[item] = alike
    return found
