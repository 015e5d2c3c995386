"""The index backend interface: what search needs from any engine (exact, approximate, a database)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from clothsim.data.records import CatalogRecord


@dataclass(frozen=True)
class SearchHit:
    """One result: its rank (1-based), catalogue id, cosine similarity and record."""

    rank: int
    id: int
    score: float
    record: CatalogRecord

    def to_dict(self) -> dict:
        return {"rank": self.rank, "id": self.id, "score": round(float(self.score), 6), **self.record.to_dict()}


@runtime_checkable
class IndexBackend(Protocol):
    """Top-k by cosine similarity over stored vectors, with add and delete by id."""

    name: str

    def __len__(self) -> int: ...

    def search(
        self,
        queries: np.ndarray,
        k: int,
        category: str | Sequence[str] | None = None,
        exclude_ids: Sequence[int] | None = None,
    ) -> list[list[SearchHit]]:
        """For each L2-normalised query row, its top ``k`` hits, best first.

        ``category`` restricts results to one or several categories; ``exclude_ids`` gives, per query,
        an id to leave out (e.g. the query item itself) or ``-1``.
        """
        ...

    def add(self, vectors: np.ndarray, records: Sequence[CatalogRecord]) -> np.ndarray:
        """Add items without a rebuild; returns their new ids."""
        ...

    def delete(self, ids: Sequence[int]) -> int:
        """Remove items by id; returns how many were present."""
        ...
