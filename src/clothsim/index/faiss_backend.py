"""FAISS backends: ``faiss-hnsw`` (a graph, vectors in RAM) and ``faiss-ivfpq`` (compressed codes in RAM,
full vectors left on disk in the store and read back only to re-rank the candidates).

Both search by inner product on the store's unit vectors (= cosine) and use clothsim ids as FAISS ids.
Deleted items and category filters are applied inside the search with an ``IDSelectorBitmap``; a query
that still comes back short of ``min(k, live matching items)`` is redone exactly over the matching rows,
so a caller always gets k results when k exist. New items are added to the graph or the lists, never
rebuilt. Files, under ``<index>/backends/<name>/``::

    state.json             the commit record: current file, its size and checksum (XXH3), store rows covered
    index-NNNNNN.faiss     the FAISS index (a new generation is written beside the old one on save)

An HNSW index is opened memory-mapped (fast start, pages shared between processes); the first add or
delete loads a private copy. Every saved file is checked against its checksum before the first search
is answered (at open when small, else in a thread started at open), and every hit is re-scored against
the store's vector of it (:func:`~clothsim.index.ann_search.checked_hits`): a damaged file is refused,
never served.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from clothsim.data.records import CatalogRecord
from clothsim.errors import ClothsimError, DataError, UsageError
from clothsim.fileio import write_stream
from clothsim.index.ann_search import (
    EXACT_BELOW,
    StoreView,
    check_queries,
    checked_hits,
    complete_rows,
    exact_hits,
    finish_rows,
    id_bitmap,
    iter_live_blocks,
    rescore_exactly,
    rows_as_arrays,
)
from clothsim.index.ann_state import (
    FileCheck,
    Progress,
    ReadWriteLock,
    SavedFile,
    coverage,
    file_record,
    is_behind,
    quiet_faiss_loader,
    read_state,
    saved_files_problems,
    write_state,
)
from clothsim.index.base import (
    BackendIndexError,
    OptionSpec,
    SearchHit,
    backend_dir,
    check_build_options_match,
    check_positive,
    coerce_options,
    rebuild_hint,
    with_defaults,
)
from clothsim.index.faiss_category_graphs import CategoryGraphs, use_category_graphs

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'clothsim[faiss]'"
HNSW = "faiss-hnsw"
IVFPQ = "faiss-ivfpq"

_COMMON = {
    "exact_below": OptionSpec(int, EXACT_BELOW, False, "a category filter matching at most this many live items is "
                                                       "searched exactly where no category graph answers it "
                                                       f"(default {EXACT_BELOW}; 0: never)"),
    "chunk_rows": OptionSpec(int, 16384, False, "store rows read at a time"),
}
HNSW_OPTIONS: dict[str, OptionSpec] = {
    # M=32 builds as fast as M=16 and finds more of the true neighbours; at 1M a shallower efConstruction
    # leaves the graph, not the search, short of recall. The figures are in docs/benchmarks.md.
    "M": OptionSpec(int, 32, True, "graph neighbours per node"),
    "efConstruction": OptionSpec(int, 200, True, "search depth while building"),
    "efSearch": OptionSpec(int, 128, False, "search depth per query; also a per-query argument"),
    "category_efSearch": OptionSpec(int, 256, False, "search depth in a category graph (a filtered query lies "
                                                     "away from the category's items); also per query"),
    "category_graphs": OptionSpec(bool, True, True, "also one small graph per category, for category-filtered "
                                                    "queries (8-bit codes, re-ranked exactly; default true)"),
    **_COMMON,
}
IVFPQ_OPTIONS: dict[str, OptionSpec] = {
    "nlist": OptionSpec(int, None, True, "inverted lists (default about the square root of the rows)"),
    "pq_m": OptionSpec(int, None, True, "PQ sub-vectors, a divisor of the dimension (default about dim/8)"),
    "pq_bits": OptionSpec(int, None, True, "bits per PQ code (default 8; fewer for small catalogues)"),
    "train_rows": OptionSpec(int, None, True, "rows sampled to train the quantizers (default 40 per centroid)"),
    "nprobe": OptionSpec(int, 32, False, "lists scanned per query (more under a filter); also per query"),
    "rerank": OptionSpec(int, 10, False, "re-score k x rerank candidates exactly from the store (0: PQ scores)"),
    **_COMMON,
}
_SPECS = {HNSW: HNSW_OPTIONS, IVFPQ: IVFPQ_OPTIONS}


def _faiss():
    quiet_faiss_loader()
    try:
        import faiss
    except ImportError as exc:
        raise ClothsimError(f"the FAISS backends need faiss-cpu ({exc}): {INSTALL_HINT}") from exc
    return faiss


# Below this many queries a search runs on one OpenMP thread: FAISS parallelises over queries, and for one
# query the threads only wait on each other (one thread is several times faster; docs/benchmarks.md).
SMALL_BATCH = 8


@contextmanager
def _threads_for(n_queries: int) -> Iterator[None]:
    """One OpenMP thread for small batches. The setting is per calling thread, so concurrent request
    threads and a build running elsewhere keep theirs."""
    if n_queries >= SMALL_BATCH:
        yield
        return
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _pq_m_default(dim: int) -> int:
    """About 8 dimensions per sub-vector (1280-d: 160 bytes per vector, 32x smaller than float32): coarser
    sub-vectors lose recall that the re-ranking does not win back (docs/benchmarks.md)."""
    limit = max(1, dim // 8, min(dim // 4, 64))  # small dimensions: no fewer than 4 per sub-vector
    return max(m for m in range(1, limit + 1) if dim % m == 0)


class FaissIndex:
    """An open FAISS index over a feature store (see the module docstring).

    Args:
        store: The store whose vectors it indexes.
        name: ``faiss-hnsw`` or ``faiss-ivfpq``.
        engine: The FAISS index (ids are clothsim ids).
        state: The commit record it was loaded from or built into.
        options: Search-time options (efSearch, nprobe, rerank, exact_below, chunk_rows).
        mapped: Whether ``engine`` is memory-mapped from its file (read-only until the first change).
    """

    def __init__(self, store: "FeatureStore", name: str, engine: Any, state: dict[str, Any],
                 options: dict[str, Any], mapped: bool = False, check: FileCheck | None = None) -> None:
        self.store = store
        self._check = check
        self.name = name
        self._engine = engine
        self._state = dict(state)
        self._options = options
        self._mapped = mapped
        self._view = StoreView(store)
        self._lock = ReadWriteLock()
        self._selectors: dict[tuple, tuple[Any, np.ndarray]] = {}
        self._engine_dirty = False
        self._state_dirty = False
        self._partitions = (CategoryGraphs(store, self.folder, list(state.get("partitions", [])), state["build"],
                                           lambda path, ntotal: _read_engine(store, name, path, False, ntotal))
                            if name == HNSW and state.get("build", {}).get("category_graphs") else None)

    # ----- facts ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.store)

    @property
    def state(self) -> dict[str, Any]:
        """A copy of the commit record (file, covered rows, build parameters)."""
        return dict(self._state)

    @property
    def folder(self) -> Path:
        return backend_dir(self.store, self.name)

    def categories(self) -> dict[str, int]:
        return self._view.categories()

    # ----- searching -----------------------------------------------------------------------
    def _search_options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        if not overrides:
            return self._options
        given = coerce_options(self.name, _SPECS[self.name], overrides)
        build_only = [n for n in given if _SPECS[self.name][n].build]
        if build_only:
            raise UsageError(f"{', '.join(build_only)} cannot change per query; {rebuild_hint(self.store, self.name)}")
        merged = {**self._options, **{k: v for k, v in given.items() if v is not None}}
        check_positive(self.name, merged, ["efSearch", "category_efSearch", "nprobe", "chunk_rows"])
        check_positive(self.name, merged, ["rerank", "exact_below"], minimum=0)
        return merged

    def _selector(self, category: str | Sequence[str] | None, mask: np.ndarray, all_ids: np.ndarray) -> Any:
        """An ``IDSelectorBitmap`` of the allowed ids, cached per filter and store state."""
        faiss = _faiss()
        key = (category if isinstance(category, (str, type(None))) else tuple(sorted(set(category))),
               int(all_ids.size), int(self.store.total_rows), int(len(self.store.deleted_ids)))
        cached = self._selectors.get(key)
        if cached is None:
            next_id = int(all_ids[-1]) + 1 if all_ids.size else 0
            bitmap = id_bitmap(all_ids[mask], next_id)
            # The selector points into the bitmap: both are kept together so it stays alive.
            cached = (faiss.IDSelectorBitmap(int(bitmap.size), faiss.swig_ptr(bitmap)), bitmap)
            if len(self._selectors) > 64:
                self._selectors.clear()
            self._selectors[key] = cached
        return cached[0]

    def warm(self) -> None:
        """Read every category graph into memory, and a memory-mapped global file through once, now
        instead of at the first queries (a cold mapped graph costs a disk read per node a query visits)."""
        started = time.perf_counter()
        self._wait_for_check()  # it read every file through already
        if self._mapped:
            _page_in(self.folder / self._state["file"])
        if self._partitions is not None:
            self._partitions.load_all()
        logger.info("%s: warmed in %.1f s", self.name, time.perf_counter() - started)

    def _behind(self) -> bool:
        return is_behind(self.store, self._view, self._state)

    def _wait_for_check(self) -> None:
        if self._check is not None:
            self._check.wait()

    def _source(self) -> str:
        return str(self.folder / str(self._state.get("file")))

    def search(
        self,
        queries: np.ndarray,
        k: int,
        category: str | Sequence[str] | None = None,
        exclude_ids: Sequence[int] | None = None,
        **search_options: Any,
    ) -> list[list[SearchHit]]:
        """Top ``k`` per query; ``search_options`` (efSearch, nprobe, rerank, exact_below) apply to this call."""
        options = self._search_options(search_options)
        queries, exclude = check_queries(queries, self.store.dim, k, exclude_ids)
        self._wait_for_check()  # nothing is answered from files not checked yet
        if self._behind():  # the store changed through another handle: catch up first
            self.refresh()
        all_ids, live = self._view.snapshot()
        mask = self._view.allowed_rows(category)
        n_allowed, n_live = self._view.allowed_count(category), self._view.allowed_count(None)
        if n_allowed == 0 or queries.shape[0] == 0:
            return [[] for _ in range(queries.shape[0])]
        wanted = k + (exclude is not None)
        names = [category] if isinstance(category, str) else sorted(set(category or ()))
        if (category is not None and self._partitions is not None and self._partitions.covers(names)
                and use_category_graphs(len(names), n_allowed, n_live)):
            with self._lock.read(), _threads_for(queries.shape[0]):
                # The graphs hold only their category's items: the selector is needed for deletes alone.
                every_live = int(self._engine.ntotal) == n_live
                selector = None if every_live else self._selector(None, live, all_ids)
                ids, scores = self._partitions.search(queries, wanted, names, options["category_efSearch"], selector,
                                                      all_ids)
        elif category is not None and n_allowed <= options["exact_below"]:
            return exact_hits(self.store, queries, k, category, exclude)
        else:
            ids, scores = self._search_engine(queries, wanted, category, mask, all_ids, n_live, n_allowed, options)
        rows = finish_rows(ids, scores, k, exclude, all_ids, mask)
        rows, redone = complete_rows(self.store, queries, k, rows, mask, all_ids, exclude)
        if redone:
            logger.debug("%s: %d of %d queries came back short and were answered exactly", self.name, redone,
                         len(rows))
        # IVF-PQ without re-ranking scores by its codes: approximate, so only impossible scores are refused.
        approximate = self.name == IVFPQ and not int(options["rerank"])
        return checked_hits(self.store, queries, rows, self._source(), rebuild_hint(self.store, self.name),
                            engine_exact=not approximate)

    def neighbours(self, queries: np.ndarray, k: int,
                   exclude_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest live items as ``(ids, scores)`` arrays by the engine's own scores, padded with
        -1 / -inf (see :class:`~clothsim.index.base.NeighbourSearch`): no records, no exact redo of short
        rows; the caller re-scores and checks the ones it keeps."""
        options = self._search_options({})
        queries, exclude = check_queries(queries, self.store.dim, k, exclude_ids)
        self._wait_for_check()
        if self._behind():
            self.refresh()
        all_ids, _ = self._view.snapshot()
        mask = self._view.allowed_rows(None)
        n_live = self._view.allowed_count(None)
        if n_live == 0 or queries.shape[0] == 0:
            return rows_as_arrays([], k, queries.shape[0])
        ids, scores = self._search_engine(queries, k + (exclude is not None), None, mask, all_ids, n_live, n_live,
                                          options)
        return rows_as_arrays(finish_rows(ids, scores, k, exclude, all_ids, mask), k)

    def _search_engine(self, queries: np.ndarray, wanted: int, category: str | Sequence[str] | None,
                       mask: np.ndarray, all_ids: np.ndarray, n_live: int, n_allowed: int,
                       options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The global graph or lists, with a selector unless every vector in them is allowed."""
        with self._lock.read(), _threads_for(queries.shape[0]):
            # No selector only when every vector in the engine is a live row; deleted items (and rows a
            # repair dropped) stay in the graph and are kept out by the selector.
            every_live = category is None and int(self._engine.ntotal) == n_allowed
            selector = None if every_live else self._selector(category, mask, all_ids)
            if self.name == HNSW:
                ids, scores = self._search_hnsw(queries, wanted, selector, options)
            else:
                ids, scores = self._search_ivfpq(queries, wanted, selector, options, all_ids,
                                                 n_allowed / max(n_live, 1))
        return ids, scores

    def _search_hnsw(self, queries: np.ndarray, wanted: int, selector: Any, options: dict[str, Any]):
        faiss = _faiss()
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(int(options["efSearch"]), wanted)
        if selector is not None:
            params.sel = selector
        scores, ids = self._engine.search(queries, wanted, params=params)
        return ids, scores

    def _search_ivfpq(self, queries: np.ndarray, wanted: int, selector: Any, options: dict[str, Any],
                      all_ids: np.ndarray, selectivity: float):
        faiss = _faiss()
        params = faiss.SearchParametersIVF()
        # Under a filter that keeps a fraction s of the items, the nearest allowed ones lie further out:
        # probing nprobe / s lists scans about as many allowed candidates as an unfiltered query does.
        probe = math.ceil(int(options["nprobe"]) / max(selectivity, 1e-9))
        params.nprobe = int(min(probe, int(self._engine.nlist)))
        if selector is not None:
            params.sel = selector
        rerank = int(options["rerank"])
        n_candidates = max(wanted, wanted * rerank) if rerank else wanted
        approx, ids = self._engine.search(queries, n_candidates, params=params)
        if not rerank:
            return ids, approx
        # PQ scores only shortlist: the candidates are re-scored with the store's exact vectors, which
        # stay on disk (memory-mapped), so RAM holds just the codes.
        return rescore_exactly(self.store, queries, ids, all_ids)

    # ----- changing ------------------------------------------------------------------------
    def _ensure_writable(self) -> None:
        """A memory-mapped engine cannot grow: load a private copy of the same file first."""
        if self._mapped:
            self._wait_for_check()
            path = self.folder / self._state["file"]
            self._engine = _read_engine(self.store, self.name, path, mapped=False, ntotal=self._state["ntotal"])
            self._mapped = False

    def _add_to_engine(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if ids.size:
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            self._engine.add_with_ids(vectors, ids.astype(np.int64))
            if self._partitions is not None:
                self._partitions.add(ids, vectors, self._view.categories_of(ids))
            self._engine_dirty = True

    def add(
        self, vectors: np.ndarray, records: Sequence[CatalogRecord], failures: Sequence[dict[str, str]] = ()
    ) -> np.ndarray:
        """Append to the store, then insert into the graph or lists (no rebuild); :meth:`save` persists."""
        ids = self.store.append(vectors, records, failures=failures)
        with self._lock.write():
            self._ensure_writable()
            covered = int(self._state["covered_next_id"])
            if ids.size and int(ids[0]) == covered:
                self._add_to_engine(ids, np.asarray(vectors, dtype=np.float32))
                self._state["covered_next_id"] = int(ids[-1]) + 1
                self._state_dirty = True
        if self._behind():
            self.refresh()
        return ids

    def delete(self, ids: Sequence[int]) -> int:
        """Tombstone in the store; the selector keeps them out of every search from now on."""
        removed = self.store.delete(ids)
        self.refresh()
        return removed

    def refresh(self) -> None:
        """Add store rows this index does not cover yet, in memory (:meth:`save` persists).

        Deleted items need nothing: every search masks the engine's ids with the store's live rows, so
        tombstones (and rows a repair dropped, or tombstones a repair reset) take effect at once.
        """
        with self._lock.write():
            all_ids, live = self._view.snapshot()
            covered = int(self._state["covered_next_id"])
            new_rows = (all_ids >= covered) & live
            if new_rows.any():
                self._ensure_writable()
                progress = Progress(f"{self.name} catching up", int(new_rows.sum()))
                for ids, block in iter_live_blocks(self.store, new_rows, self._options["chunk_rows"]):
                    self._add_to_engine(ids, block)
                    progress.add(ids.size)
                logger.info("%s: added %d store rows the index did not cover", self.name, progress.done)
            now = coverage(self.store, self._view)
            now["covered_next_id"] = max(now["covered_next_id"], covered)
            if any(int(self._state.get(key, -1)) != value for key, value in now.items()):
                self._state.update(now)
                self._state_dirty = True
            self._selectors.clear()

    def save(self) -> None:
        """Write a new generation of the index files beside the old ones, then switch ``state.json``.

        A failure before the switch removes the new files and leaves the previous generation in force.
        Holds the index folder's writer lock: one writer at a time, the store's or a backend's.
        """
        with self.store.writer(), self._lock.write():
            if not (self._engine_dirty or self._state_dirty):
                return
            folder = self.folder
            folder.mkdir(parents=True, exist_ok=True)
            state = dict(self._state)
            written: list[Path] = []
            try:
                if self._engine_dirty or not state.get("file"):
                    started = time.perf_counter()
                    generation = int(state.get("generation", 0)) + 1
                    if self._partitions is not None:
                        state["partitions"] = self._partitions.save(generation)
                    new_file = f"index-{generation:06d}.faiss"
                    written.append(folder / new_file)
                    size, checksum = write_engine(self._engine, folder / new_file)
                    state.pop("sha256", None)  # a record written before XXH3
                    state.update(file_record(folder / new_file, size, checksum), generation=generation,
                                 ntotal=int(self._engine.ntotal))
                    logger.info("%s: wrote %s (%.1f MiB) in %.1f s", self.name, folder / new_file, size / 2**20,
                                time.perf_counter() - started)
            except BaseException:
                if self._partitions is not None:
                    self._partitions.rollback()
                for path in written:
                    path.unlink(missing_ok=True)
                raise
            try:
                write_state(self.store, self.name, state)  # the commit point
            except BaseException:
                if self._partitions is not None:
                    self._partitions.rollback(remove_files=False)  # the rename may have happened: keep them
                raise
            self._state = state
            if self._partitions is not None:
                self._partitions.saved()
            self._engine_dirty = self._state_dirty = False
            keep = {state["file"]} | (self._partitions.files() if self._partitions is not None else set())
            for stale in [*folder.glob("index-*.faiss"), *folder.glob("part-*.faiss")]:
                if stale.name not in keep:  # the previous generation and crash orphans
                    stale.unlink(missing_ok=True)

    def verify(self) -> None:
        """Check the saved file against the SHA-256 in ``state.json`` (reads the whole file).

        Raises:
            BackendIndexError: the file changed since it was written.
        """
        problems = _check_file(self.store, self.name, self._state, full=True)
        if problems:
            raise BackendIndexError(problems[0])


def write_engine(engine: Any, path: Path) -> tuple[int, str]:
    """Write a FAISS index atomically through a Python file object: the checksum is computed while it is
    written, and a full disk is an ``OSError`` (a :class:`~clothsim.fileio.DiskWriteError` naming the file)
    rather than a C++ exception's text inside a RuntimeError."""
    faiss = _faiss()
    return write_stream(path, lambda fh: faiss.write_index(engine, faiss.PyCallbackIOWriter(fh.write)))


def saved_files(store: "FeatureStore", name: str, state: dict[str, Any]) -> list[SavedFile]:
    """The index file and every category graph's, as ``state`` records them."""
    folder = backend_dir(store, name)
    files = [SavedFile(folder / str(state.get("file")), state)]
    files += [SavedFile(folder / str(p.get("file")), p, f" (the graph of category {p.get('category')!r})")
              for p in state.get("partitions", [])]
    return files


def _check_file(store: "FeatureStore", name: str, state: dict[str, Any], full: bool) -> list[str]:
    """Presence and size of the saved index file and of each category graph's, and with ``full`` their
    checksums, against ``state``."""
    return saved_files_problems(saved_files(store, name, state), full, rebuild_hint(store, name))


def _read_engine(store: "FeatureStore", name: str, path: Path, mapped: bool, ntotal: Any) -> Any:
    """The FAISS index in ``path``, refused unless it reads and holds ``ntotal`` vectors of the store's dim."""
    faiss = _faiss()
    try:
        flags = faiss.IO_FLAG_MMAP_IFC if mapped else 0
        engine = faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise BackendIndexError(f"{path} is damaged or truncated ({reason[:300]}); {rebuild_hint(store, name)}") \
            from None
    if engine.d != store.dim or engine.ntotal != ntotal:
        raise BackendIndexError(f"{path} holds {engine.ntotal} vectors of dim {engine.d}; {ntotal} of dim "
                                f"{store.dim} were expected; {rebuild_hint(store, name)}")
    return engine


class _FaissPlugin:
    """Shared build/open of the two FAISS plug-ins."""

    name = ""
    description = ""

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Options checked and typed, without touching any file (``clothsim evaluate`` calls it first)."""
        given = coerce_options(self.name, _SPECS[self.name], options)
        check_positive(self.name, given, ["M", "efConstruction", "efSearch", "category_efSearch", "nlist", "pq_m",
                                          "pq_bits", "train_rows", "nprobe", "chunk_rows"])
        check_positive(self.name, given, ["rerank", "exact_below"], minimum=0)
        if given.get("pq_bits") is not None and given["pq_bits"] > 16:
            raise UsageError(f"{self.name} option pq_bits must be at most 16, got {given['pq_bits']}")
        _faiss()
        return given

    def _search_defaults(self, given: dict[str, Any]) -> dict[str, Any]:
        resolved = with_defaults(_SPECS[self.name], given)
        return {name: resolved[name] for name, spec in _SPECS[self.name].items() if not spec.build}

    def build(self, store: "FeatureStore", **options: Any) -> FaissIndex:
        """Build over every live vector of ``store`` and save it; returns it open."""
        given = self.check_options(options)
        resolved = with_defaults(_SPECS[self.name], given)
        view = StoreView(store)
        all_ids, live = view.snapshot()
        n_live = int(live.sum())
        started = time.perf_counter()
        engine, build_params = self._new_engine(store, resolved, n_live, live)
        state = {**coverage(store, view), "build": build_params, "generation": _last_generation(backend_dir(store, self.name))}
        index = FaissIndex(store, self.name, engine, state, self._search_defaults(given))
        progress = Progress(f"{self.name} build", n_live)
        for ids, block in iter_live_blocks(store, live, resolved["chunk_rows"]):
            index._add_to_engine(ids, block)
            progress.add(ids.size)
        index._engine_dirty = True
        index.save()
        logger.info("%s: built over %d vectors in %.1f s", self.name, n_live, time.perf_counter() - started)
        return index

    def _new_engine(self, store, resolved, n_live, live) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def check_saved(self, store: "FeatureStore", *, full: bool = True) -> list[str]:
        """``state.json`` (format, own checksum, owner store) and the index file's size and, with ``full``, its
        checksum and the vector count FAISS reads from it."""
        try:
            state = read_state(store, self.name)
        except BackendIndexError as exc:
            return [str(exc)]
        problems = _check_file(store, self.name, state, full)
        if full and not problems:  # the engine's own count against the record (cheap once checksummed)
            try:
                _read_engine(store, self.name, backend_dir(store, self.name) / str(state["file"]),
                             mapped=self.name == HNSW, ntotal=state.get("ntotal"))
            except BackendIndexError as exc:
                problems = [str(exc)]
        return problems

    def open(self, store: "FeatureStore", **options: Any) -> FaissIndex:
        """Reopen the saved index (memory-mapped for HNSW); refuses missing, damaged or foreign files."""
        given = self.check_options(options)
        state = read_state(store, self.name)
        check_build_options_match(self.name, store, _SPECS[self.name], given, state.get("build", {}))
        problems = _check_file(store, self.name, state, full=False)
        if problems:
            raise BackendIndexError(problems[0])
        # Checksums before the first answer: now when the files are small, else in the background.
        check = FileCheck(saved_files(store, self.name, state), rebuild_hint(store, self.name))
        path = backend_dir(store, self.name) / str(state["file"])
        engine = _read_engine(store, self.name, path, mapped=self.name == HNSW, ntotal=state.get("ntotal"))
        index = FaissIndex(store, self.name, engine, state, self._search_defaults(given), mapped=self.name == HNSW,
                           check=check)
        if index._behind():
            logger.warning("%s covers the store only up to id %d; adding the rest in memory (run `clothsim index` "
                           "again, or save(), to keep it)", path, state["covered_next_id"])
            index.refresh()
        return index


def _last_generation(folder: Path) -> int:
    numbers = [int(p.stem.split("-")[1]) for p in folder.glob("index-*.faiss") if p.stem.split("-")[1].isdigit()]
    return max(numbers, default=0)


class FaissHnswBackend(_FaissPlugin):
    """The ``faiss-hnsw`` plug-in: an HNSW graph over the vectors, inner product on unit vectors."""

    name = HNSW
    description = ("FAISS HNSW graph, vectors in RAM; options M, efConstruction, efSearch (per query too); "
                   "add without rebuild, deletes and filters inside the search")

    def _new_engine(self, store, resolved, n_live, live):
        faiss = _faiss()
        graph = faiss.IndexHNSWFlat(store.dim, int(resolved["M"]), faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = int(resolved["efConstruction"])
        # IndexIDMap2: FAISS ids are clothsim ids, and id selectors are given in those ids.
        params = {"M": int(resolved["M"]), "efConstruction": int(resolved["efConstruction"]),
                  "category_graphs": bool(resolved["category_graphs"])}
        return faiss.IndexIDMap2(graph), params


class FaissIvfPqBackend(_FaissPlugin):
    """The ``faiss-ivfpq`` plug-in: inverted lists of product-quantized codes, re-ranked from the store."""

    name = IVFPQ
    description = ("FAISS IVF-PQ: compressed codes in RAM, vectors stay on disk for exact re-ranking; options "
                   "nlist, pq_m, pq_bits, nprobe, rerank")

    def _new_engine(self, store, resolved, n_live, live):
        faiss = _faiss()
        dim = store.dim
        if n_live < 2:
            raise DataError(f"{store.root}: faiss-ivfpq needs at least 2 live vectors to train on, the store has "
                            f"{n_live}; use the exact or faiss-hnsw backend")
        nlist = resolved["nlist"] or int(min(max(1, round(math.sqrt(n_live))), max(1, n_live // 39)))
        nlist = min(int(nlist), n_live)
        pq_m = resolved["pq_m"] or _pq_m_default(dim)
        if dim % pq_m:
            divisors = [m for m in range(1, min(dim, 128) + 1) if dim % m == 0]
            raise UsageError(f"faiss-ivfpq option pq_m must divide the dimension {dim}; try one of {divisors}")
        pq_bits = resolved["pq_bits"] or int(max(1, min(8, math.floor(math.log2(max(n_live / 39, 2))))))
        train_rows = resolved["train_rows"] or min(200_000, max(40 * nlist, 40 * 2 ** pq_bits, 10_000))
        train_rows = min(int(train_rows), n_live)
        quantizer = faiss.IndexFlatIP(dim)
        engine = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, pq_bits, faiss.METRIC_INNER_PRODUCT)
        if n_live < 39 * max(nlist, 2 ** pq_bits):
            # Small catalogues: fewer training points than FAISS's rule of thumb; say so once, here.
            engine.cp.min_points_per_centroid = 1
            engine.pq.cp.min_points_per_centroid = 1
            logger.info("faiss-ivfpq: only %d vectors to train %d lists and %d-bit codes; recall will be modest",
                        n_live, nlist, pq_bits)
        engine.train(_training_sample(store, live, train_rows, resolved["chunk_rows"]))
        params = {"nlist": nlist, "pq_m": pq_m, "pq_bits": pq_bits, "train_rows": train_rows}
        return engine, params


def _page_in(path: Path, chunk: int = 1 << 24) -> None:
    """Read a file once, so the OS page cache holds it for the memory map (as far as RAM allows)."""
    buffer = bytearray(chunk)
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass


def _training_sample(store: "FeatureStore", live: np.ndarray, n: int, chunk_rows: int) -> np.ndarray:
    """``n`` live vectors spread evenly over the store (deterministic)."""
    rows = np.flatnonzero(live)
    pick = rows[np.linspace(0, rows.size - 1, n).round().astype(np.int64)] if n < rows.size else rows
    mask = np.zeros(live.shape, dtype=bool)
    mask[pick] = True
    return np.concatenate([block for _, block in iter_live_blocks(store, mask, chunk_rows)])
