"""The index backend interface: what search needs from any engine (exact, approximate, a database)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import numpy as np

from clothsim.data.records import CatalogRecord

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore


@dataclass(frozen=True)
class SearchHit:
    """One result: its rank (1-based), catalogue id, cosine similarity and record; ``group_size`` in a
    search that collapses near-duplicates (how many items of the catalogue this one stands for)."""

    rank: int
    id: int
    score: float
    record: CatalogRecord
    group_size: int | None = None

    def to_dict(self) -> dict:
        row = {"rank": self.rank, "id": self.id, "score": round(float(self.score), 6), **self.record.to_dict()}
        if self.group_size is not None:
            row["group_size"] = self.group_size
        return row


@runtime_checkable
class IndexBackend(Protocol):
    """An open index: top-k by cosine similarity over a store's vectors, with add and delete by id.

    Everything :class:`clothsim.SimilarityIndex`, the CLI and the web service do with an index goes
    through these methods; they never hold a concrete backend class.
    """

    name: str

    def __len__(self) -> int:
        """Live (not deleted) items."""
        ...

    def categories(self) -> dict[str, int]:
        """Live item count per category, sorted by category."""
        ...

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

    def add(
        self, vectors: np.ndarray, records: Sequence[CatalogRecord], failures: Sequence[dict[str, str]] = ()
    ) -> np.ndarray:
        """Add items without a rebuild; returns their new ids. ``failures`` (``{"path", "reason"}``
        of files that could not be encoded) join the index's failure list in the same commit."""
        ...

    def delete(self, ids: Sequence[int]) -> int:
        """Remove items by id; returns how many were present."""
        ...

    def save(self) -> None:
        """Make every change so far durable beside the store (a no-op where changes are written at once)."""
        ...

    def refresh(self) -> None:
        """Catch up with a store that changed outside this backend (rows appended, ids tombstoned, e.g.
        by an incremental ``clothsim index`` sync), without a rebuild where the engine allows it."""
        ...


@runtime_checkable
class IndexBackendPlugin(Protocol):
    """A plug-in of the ``clothsim.index_backends`` group: builds and reopens one kind of index.

    A backend keeps whatever it needs beyond the store's vectors (a graph, a database file) under
    ``store.root / "backends" / <its name>``, and the store's manifest records which backend was built,
    with its options, so :func:`clothsim.index.open_index` reopens it without being told.
    """

    description: str

    def build(self, store: "FeatureStore", **options: Any) -> IndexBackend:
        """Build the index over every vector in ``store`` and save it; returns it open."""
        ...

    def open(self, store: "FeatureStore", **options: Any) -> IndexBackend:
        """Reopen an index built earlier by :meth:`build` over ``store``."""
        ...


@runtime_checkable
class NeighbourSearch(Protocol):
    """An optional extra of an open :class:`IndexBackend`: the nearest live items as ids and scores alone,
    no records made (what a scan of the whole catalogue for near-duplicates asks, once per item)."""

    def neighbours(self, queries: np.ndarray, k: int,
                   exclude_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)``, each ``(len(queries), k)``, best first; padded with id ``-1`` and score
        ``-inf`` where fewer than ``k`` items are eligible."""
        ...


@runtime_checkable
class WarmableBackend(Protocol):
    """An optional extra of an open :class:`IndexBackend`: load now what the first queries would load
    lazily (``clothsim serve`` calls it before taking requests, so no early request pays for it)."""

    def warm(self) -> None:
        ...


@runtime_checkable
class CheckableBackendPlugin(Protocol):
    """An optional extra of an :class:`IndexBackendPlugin`: checking its saved files without serving them.

    ``clothsim verify`` calls it for every backend saved in an index folder; a plug-in without it is
    listed as not checked.
    """

    def check_saved(self, store: "FeatureStore", *, full: bool = True) -> list[str]:
        """Problems found in what the backend saved over ``store`` (empty when intact). ``full`` reads
        whole files (checksums); without it, only records, sizes and presence are checked."""
        ...
