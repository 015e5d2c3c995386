"""One small HNSW graph per category beside ``faiss-hnsw``'s global graph, for category-filtered queries.

A filter that keeps 1 item in 50 makes the global graph walk about fifty times as many nodes to find k
allowed ones, and an exact scan over the matching rows is no faster. A graph built over the category's
items alone answers the same query in a graph fifty times smaller. Its vectors are kept as 8-bit
scalar-quantized codes (a quarter of float32), which only shortlist: the candidates are re-scored with
the store's exact vectors, so the scores are the same as every other path's.

Files (beside the global graph, in ``<index>/backends/faiss-hnsw/``): ``part-GGGGGG-NNNN.faiss``, one per
category, listed in ``state.json`` under ``partitions`` with their size and SHA-256. A save rewrites
only the graphs that changed. A graph is read into memory the first time a query needs it (not
memory-mapped: a query walks pages all over a graph, and on a cold page cache each is a disk read).

A filtered query usually lies away from the category's items (a shirt's photo filtered to shoes), so the
walk needs more depth than an unfiltered one; hence ``category_efSearch`` (default 256). The figures, and
the alternatives weighed and not adopted (IVF lists per category, entry points from k-means centres), are
in ``docs/design-notes.md``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothsim.index.ann_search import rescore_exactly
from clothsim.index.ann_state import file_record
from clothsim.index.base import BackendIndexError

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore

logger = logging.getLogger(__name__)

# The 8-bit codes rank a little differently from float32: this many candidates per wanted hit are
# re-scored exactly. Measured on one category of the 1M benchmark (20,129 1280-d items, 200 queries):
# 2 and 4 gave the same recall@10 (0.986 at efSearch 256, 0.904 at 128), as high as a float32 graph's
# (0.985), and 8-bit codes searched fastest (0.78 ms against 1.05 for fp16 and 1.32 for float32); the
# re-scoring is a quarter of a filtered query, so the shortlist is kept at 2.
SHORTLIST = 2
# Rows of the store sampled to fit the quantizer's per-dimension range.
QUANTIZER_SAMPLE = 20_000


def use_category_graphs(n_categories: int, n_allowed: int, n_live: int) -> bool:
    """Whether a filter over ``n_categories`` categories is cheaper on their graphs than on the global one.

    One graph search each, against a global search that slows about as ``n_live / n_allowed``: the
    category graphs win while there are no more of them than that ratio.
    """
    return 0 < n_categories <= max(n_live, 1) / max(n_allowed, 1)


class CategoryGraphs:
    """The per-category graphs of one ``faiss-hnsw`` index.

    Args:
        store: The feature store (its vectors re-rank the shortlists).
        folder: The backend folder holding the files.
        entries: ``state.json``'s ``partitions`` list (``[]`` for a new index).
        params: Graph parameters (``M``, ``efConstruction``).
        read_engine: Reads a saved FAISS file into memory (``(path, ntotal) -> index``), refusing a damaged
            one or one that does not hold ``ntotal`` vectors.
    """

    def __init__(self, store: "FeatureStore", folder: Path, entries: list[dict[str, Any]], params: dict[str, int],
                 read_engine: Callable[[Path, int], Any]) -> None:
        self.store = store
        self.folder = folder
        self.params = params
        self._read_engine = read_engine
        self._entries = {e["category"]: dict(e) for e in entries}
        self._graphs: dict[str, Any] = {}
        self._dirty: set[str] = set()
        self._quantizer_sample: np.ndarray | None = None
        self._pending: tuple[dict[str, dict[str, Any]], list[Path]] | None = None
        self._lock = threading.Lock()

    # ----- building ------------------------------------------------------------------------
    def _new_graph(self) -> Any:
        import faiss

        graph = faiss.IndexHNSWSQ(self.store.dim, faiss.ScalarQuantizer.QT_8bit, int(self.params["M"]),
                                  faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = int(self.params["efConstruction"])
        graph.train(self._sample())
        return faiss.IndexIDMap2(graph)

    def _sample(self) -> np.ndarray:
        """Live vectors spread over the whole store: one quantizer range fits every category."""
        if self._quantizer_sample is None:
            live = np.flatnonzero(self.store.live_mask())
            if live.size == 0:
                raise BackendIndexError(f"{self.store.root}: no live vectors to fit the category graphs' codes on")
            pick = live[np.linspace(0, live.size - 1, min(QUANTIZER_SAMPLE, live.size)).round().astype(np.int64)]
            self._quantizer_sample = self.store.vectors_for(np.asarray(self.store.all_ids())[pick])
        return self._quantizer_sample

    def add(self, ids: np.ndarray, vectors: np.ndarray, categories: list[str | None]) -> None:
        """Insert each vector into its category's graph (a new category gets a new graph; a vector
        without a category goes into none)."""
        if not ids.size:
            return
        names = np.asarray(categories, dtype=object)
        with self._lock:
            for name in dict.fromkeys(c for c in categories if c is not None):
                rows = np.flatnonzero(names == name)
                graph = self._writable(name)
                graph.add_with_ids(np.ascontiguousarray(vectors[rows], dtype=np.float32), ids[rows].astype(np.int64))
                self._dirty.add(name)

    def _writable(self, name: str) -> Any:
        if name not in self._graphs:
            self._graphs[name] = self._read(name) if name in self._entries else self._new_graph()
        return self._graphs[name]

    # ----- searching -----------------------------------------------------------------------
    def _get(self, name: str) -> Any | None:
        with self._lock:
            if name not in self._graphs:
                if name not in self._entries:
                    return None
                self._graphs[name] = self._read(name)
            return self._graphs[name]

    def _read(self, name: str) -> Any:
        entry = self._entries[name]
        return self._read_engine(self.folder / entry["file"], entry["ntotal"])

    def load_all(self) -> None:
        """Read every saved graph not in memory yet."""
        for name in list(self._entries):
            self._get(name)

    def covers(self, names: list[str]) -> bool:
        return all(name in self._entries or name in self._graphs for name in names)

    def search(self, queries: np.ndarray, wanted: int, names: list[str], ef_search: int,
               selector: Any, all_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, exact scores)`` of shortlists from the graphs of ``names``, ``-1`` padded.

        ``selector`` (live ids) keeps deleted items out; ``None`` when every item in the graphs is live.
        ``all_ids`` (the store's, sorted): an id a repair dropped from the store is never re-scored.
        """
        import faiss

        params = faiss.SearchParametersHNSW()
        shortlist = wanted * SHORTLIST
        params.efSearch = max(int(ef_search), shortlist)
        if selector is not None:
            params.sel = selector
        found = []
        for name in names:
            graph = self._get(name)
            if graph is not None and graph.ntotal:
                found.append(graph.search(queries, min(shortlist, int(graph.ntotal)), params=params)[1])
        if not found:
            return np.full((len(queries), 0), -1, dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
        return rescore_exactly(self.store, queries, np.concatenate(found, axis=1), all_ids)

    # ----- saving --------------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def save(self, generation: int) -> list[dict[str, Any]]:
        """Write the graphs that changed as new files; returns the ``partitions`` list for ``state.json``.

        The caller commits ``state.json``, then calls :meth:`saved`, or :meth:`rollback` if anything
        failed before the commit (the new files are removed, the old ones still listed).
        """
        from clothsim.index.faiss_backend import write_engine

        with self._lock:
            self._pending = (dict(self._entries), [])
            for number, name in enumerate(sorted(self._dirty)):
                path = self.folder / f"part-{generation:06d}-{number:04d}.faiss"
                graph = self._graphs[name]
                self._pending[1].append(path)
                size, checksum = write_engine(graph, path)
                self._entries[name] = {"category": name, **file_record(path, size, checksum),
                                       "ntotal": int(graph.ntotal)}
            return [self._entries[name] for name in sorted(self._entries)]

    def saved(self) -> None:
        self._dirty.clear()
        self._pending = None

    def rollback(self, remove_files: bool = True) -> None:
        """Back to the entries before :meth:`save`; ``remove_files=False`` where the commit may have landed."""
        if self._pending is not None:
            self._entries, written = self._pending
            for path in written if remove_files else ():
                path.unlink(missing_ok=True)
            self._pending = None

    def files(self) -> set[str]:
        return {e["file"] for e in self._entries.values()}
