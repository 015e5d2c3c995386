"""What the approximate and database backends share: options, the commit record beside the store,
live/category masks, the exact fallback that keeps "k results whenever k exist" true, and hits.

Nothing here imports FAISS or pymilvus; each backend module imports its engine itself.

Every backend keeps its files in ``store.root / "backends" / <backend name>``; the small
``state.json`` there is the commit record: it names the engine file (or database collection) that is
current and what part of the store it covers (``covered_next_id``: every row below that id was
added; ``covered_deleted``: how many of the store's tombstones were mirrored). A new engine file is
written beside the old one and ``state.json`` is switched with one atomic rename, so a crash leaves
the previous valid state.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from clothsim.errors import ClothsimError, UsageError
from clothsim.fileio import FAST_CHECKSUM, file_checksum, write_json
from clothsim.index.base import SearchHit
from clothsim.index.topk import DEFAULT_CHUNK_ROWS, topk_over_blocks

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_FORMAT = 1
# A category filter that leaves at most this many live items is answered by the exact backend over them
# (1 of 50 categories of 1M x 1280: ~40 ms measured): graph search under a narrow filter misses many of
# the nearest allowed items when the filter excludes the query's own neighbourhood (measured: recall@10
# 0.28-0.75 for HNSW at 2-20 % selectivity on clustered data; IVF-PQ 0.91 at 1M), exact search none.
EXACT_BELOW = 50_000


class BackendIndexError(ClothsimError, RuntimeError):
    """A backend's files are missing, damaged, out of step with the store or from a newer clothsim.

    The message names the file (or database) and says how to rebuild it.
    """


class BackendUnavailable(ClothsimError):  # not an OSError: an `except OSError` must not swallow it
    """A backend's server cannot be reached now. Not damage: nothing to rebuild; the same call may succeed
    once the server is back (``clothsim serve`` answers 503 with ``Retry-After`` meanwhile)."""


def quiet_faiss_loader() -> None:
    """FAISS's loader logs every CPU-feature probe at INFO (eight lines per process, on every command);
    unless someone set its level, only its warnings are shown."""
    loader = logging.getLogger("faiss.loader")
    if loader.level == logging.NOTSET:
        loader.setLevel(logging.WARNING)


# ----- options ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptionSpec:
    """One backend option: its type, default, whether it is fixed at build time, and what it does."""

    type: type
    default: Any
    build: bool
    help: str


def parse_option_pairs(pairs: Iterable[str] | None) -> dict[str, Any]:
    """``["M=32", "uri=http://h:19530"]`` -> ``{"M": 32, "uri": "http://h:19530"}``.

    Values that read back exactly as an int, a float or true/false become one (``"0123"`` stays a
    string), so options recorded in the manifest have their natural JSON type.

    Raises:
        UsageError: an item without ``=`` or with an empty key.
    """
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"backend option {pair!r} is not KEY=VALUE (e.g. --backend-option efSearch=128)")
        options[key] = _literal(value.strip())
    return options


def _literal(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if str(value) == text:
            return value
    return text


def coerce_options(backend: str, specs: Mapping[str, OptionSpec], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` checked against ``specs`` and converted to each option's type.

    Raises:
        UsageError: an unknown option (the message lists the known ones) or a value of the wrong kind.
    """
    unknown = sorted(set(given) - set(specs))
    if unknown:
        known = ", ".join(f"{name} ({spec.help})" for name, spec in specs.items())
        raise UsageError(f"{backend} has no option {', '.join(map(repr, unknown))}; known: {known}")
    out: dict[str, Any] = {}
    for name, value in given.items():
        spec = specs[name]
        if value is None:
            out[name] = None
            continue
        try:
            if spec.type is str:
                out[name] = str(value)
            elif spec.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                out[name] = int(value)
            elif spec.type is bool:
                if not isinstance(value, bool):
                    raise ValueError(value)
                out[name] = value
            else:
                out[name] = spec.type(value)
        except (TypeError, ValueError):
            raise UsageError(f"{backend} option {name} must be {spec.type.__name__}, got {value!r}") from None
    return out


def with_defaults(specs: Mapping[str, OptionSpec], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every option, ``given`` first, else its default."""
    return {name: spec.default if given.get(name) is None else given[name] for name, spec in specs.items()}


def check_positive(backend: str, options: Mapping[str, Any], names: Sequence[str], minimum: int = 1) -> None:
    """Refuse int options below ``minimum`` (``None`` means automatic and passes)."""
    for name in names:
        value = options.get(name)
        if value is not None and value < minimum:
            raise UsageError(f"{backend} option {name} must be at least {minimum}, got {value}")


def check_build_options_match(backend: str, store: "FeatureStore", specs: Mapping[str, OptionSpec],
                              given: Mapping[str, Any], built: Mapping[str, Any]) -> None:
    """At open time, a build option that differs from what the index was built with is refused."""
    for name, value in given.items():
        if specs[name].build and value is not None and built.get(name) != value:
            raise UsageError(
                f"{name} is fixed when the {backend} index is built (this one was built with "
                f"{name}={built.get(name)!r}); {rebuild_hint(store, backend, f'{name}={value}')}")


def rebuild_hint(store: "FeatureStore", backend: str, option: str | None = None) -> str:
    """How to rebuild a backend's files from the store's vectors: the same ``clothsim index`` command (it
    rebuilds a backend whose files are missing or damaged, or whose build options changed, without
    encoding anything again)."""
    extra = f" --backend-option {option}" if option else ""
    return (f"rebuild it with `clothsim index DATA --out {store.root} --backend {backend}{extra}` (it rebuilds the "
            f"{backend} files from the stored vectors; or clothsim.index.build_index(store, {backend!r}) in Python)")


# ----- the commit record -------------------------------------------------------------------------
def backend_dir(store: "FeatureStore", name: str) -> Path:
    return Path(store.root) / "backends" / name


def store_identity(store: "FeatureStore") -> dict[str, Any]:
    """What ties a backend's files to one store (a store rebuilt from scratch is another store)."""
    fingerprint = store.manifest.get("fingerprint", {})
    return {"created": store.manifest.get("created"), "encoder": fingerprint.get("encoder"),
            "weights": fingerprint.get("weights"), "dim": int(store.dim)}


def read_state(store: "FeatureStore", name: str) -> dict[str, Any]:
    """The backend's ``state.json``, checked for format and for belonging to this store.

    Raises:
        BackendIndexError: missing, unreadable, from a newer clothsim, or made for another store.
    """
    path = backend_dir(store, name) / STATE_FILE
    if not path.is_file():
        raise BackendIndexError(f"{path} is missing: no {name} index was built over {store.root}; "
                                + rebuild_hint(store, name))
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackendIndexError(f"{path} is damaged ({exc}); " + rebuild_hint(store, name)) from None
    if not isinstance(state, dict) or not isinstance(state.get("format_version"), int):
        raise BackendIndexError(f"{path} is not a {name} state record; " + rebuild_hint(store, name))
    if state["format_version"] > STATE_FORMAT:
        raise BackendIndexError(
            f"{path} was written by a newer clothsim (backend format {state['format_version']}, this one reads "
            f"up to {STATE_FORMAT}); upgrade clothsim, or " + rebuild_hint(store, name))
    if state.get("backend") != name:
        raise BackendIndexError(f"{path} belongs to backend {state.get('backend')!r}, not {name!r}; "
                                + rebuild_hint(store, name))
    if state.get("store") != store_identity(store):
        raise BackendIndexError(f"{path} was built over another store than {store.root} (it was rebuilt or "
                                "replaced since); " + rebuild_hint(store, name))
    return state


def write_state(store: "FeatureStore", name: str, state: dict[str, Any]) -> None:
    """Switch to ``state`` with one atomic rename (the commit point of a backend's save)."""
    record = {**state, "format_version": STATE_FORMAT, "backend": name, "store": store_identity(store),
              "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(backend_dir(store, name) / STATE_FILE, record)


# ----- the files a backend saved -----------------------------------------------------------------
#: Saved files up to this many bytes in all are checked whole when an index opens; bigger ones in a
#: thread started at open, which the first search waits for (a 5 GB graph: about half a second).
CHECK_AT_OPEN_BYTES = 64 * 1024 * 1024


def file_record(path: Path, size: int, checksum: str) -> dict[str, Any]:
    """What ``state.json`` records of one saved file: its name, size and fast checksum."""
    return {"file": path.name, "file_bytes": int(size), FAST_CHECKSUM: checksum}


def record_file(path: Path) -> dict[str, Any]:
    """:func:`file_record` of a file already on disk (read once)."""
    size, checksum = file_checksum(path)
    return file_record(path, size, checksum)


@dataclass(frozen=True)
class SavedFile:
    """One file a backend saved, as its commit record describes it (``file_bytes`` and a checksum:
    :data:`~clothsim.fileio.FAST_CHECKSUM`, or ``sha256`` in records written before it)."""

    path: Path
    record: Mapping[str, Any]
    label: str = ""  # how messages name it beyond its path, e.g. " (the graph of category 'hat')"


def saved_file_problem(saved: SavedFile, full: bool, hint: str) -> str | None:
    """What is wrong with one saved file: missing, another size, or (with ``full``) another checksum."""
    path, record = saved.path, saved.record
    if not path.is_file():
        return f"{path}{saved.label} is missing; {hint}"
    size = path.stat().st_size
    if size != record.get("file_bytes"):
        return (f"{path}{saved.label} is truncated or damaged ({size} bytes, {record.get('file_bytes')} were "
                f"written); {hint}")
    if full:
        algorithm = FAST_CHECKSUM if FAST_CHECKSUM in record else "sha256"
        if file_checksum(path, algorithm)[1] != record.get(algorithm):
            return (f"{path}{saved.label} does not match its checksum in {path.parent / STATE_FILE}: it was "
                    f"damaged; {hint}")
    return None


def saved_files_problems(files: Sequence[SavedFile], full: bool, hint: str) -> list[str]:
    return [problem for saved in files if (problem := saved_file_problem(saved, full, hint))]


class FileCheck:
    """The checksums of a backend's saved files, checked before anything is served.

    Small files are checked at once (the constructor raises); bigger ones in a thread started here, so
    that loading the encoder and the first query's decoding overlap it, and :meth:`wait` (called by every
    search before it answers) raises the first problem found. Sizes are checked at open either way.
    """

    def __init__(self, files: Sequence[SavedFile], hint: str, at_once_bytes: int | None = None) -> None:
        self._files = list(files)
        self._hint = hint
        self._problem: str | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        total = sum(int(f.record.get("file_bytes") or 0) for f in self._files)
        if total <= (CHECK_AT_OPEN_BYTES if at_once_bytes is None else at_once_bytes):
            self._run()
            self.wait()
        else:
            logger.info("checking %.0f MiB of index files in the background", total / 2**20)
            self._thread = threading.Thread(target=self._run, name="clothsim-file-check", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            problems = saved_files_problems(self._files, True, self._hint)
            self._problem = problems[0] if problems else None
        except OSError as exc:
            self._problem = f"{exc.filename or 'an index file'} cannot be read ({exc.strerror or exc}); {self._hint}"
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> None:
        """Block until the check is over; raise :class:`BackendIndexError` if a file is damaged."""
        if not self._done.is_set():
            self._done.wait()
        if self._problem is not None:
            raise BackendIndexError(self._problem)


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
#: query's norm is still impossible: codes of unit vectors reconstruct to about unit length (measured at
#: most 1.2 on this project's test catalogues); a damaged file gives 1e24.
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


class Progress:
    """Logs rows done and the rate every ``every`` seconds during a long build."""

    def __init__(self, what: str, total: int, every: float = 30.0,
                 log: Callable[..., None] | None = None) -> None:
        self.what, self.total, self.every = what, total, every
        self.log = log or logger.info
        self.started = self._last = time.perf_counter()
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._last = now
            rate = self.done / max(now - self.started, 1e-9)
            self.log("%s: %d / %d rows (%.0f rows/s)", self.what, self.done, self.total, rate)


class ReadWriteLock:
    """Many concurrent searches, or one writer (add, delete, refresh, save), never both.

    Engines such as FAISS answer concurrent reads safely but not a read during an add.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    def read(self) -> "_Held":
        return _Held(self, write=False)

    def write(self) -> "_Held":
        return _Held(self, write=True)

    def _acquire(self, write: bool) -> None:
        with self._cond:
            if write:
                while self._writer or self._readers:
                    self._cond.wait()
                self._writer = True
            else:
                while self._writer:
                    self._cond.wait()
                self._readers += 1

    def _release(self, write: bool) -> None:
        with self._cond:
            if write:
                self._writer = False
            else:
                self._readers -= 1
            self._cond.notify_all()


class _Held:
    def __init__(self, lock: ReadWriteLock, write: bool) -> None:
        self.lock, self.write_mode = lock, write

    def __enter__(self) -> None:
        self.lock._acquire(self.write_mode)

    def __exit__(self, *exc: object) -> None:
        self.lock._release(self.write_mode)


def coverage(store: "FeatureStore", view: StoreView) -> dict[str, int]:
    """What a backend records to notice later that the store changed without it: the next id it has
    seen, the rows the store had and its tombstone count (rows can also vanish, when a damaged segment
    is dropped in a repair, and tombstones can be reset)."""
    return {"covered_next_id": view.next_id(), "covered_rows": int(store.total_rows),
            "covered_deleted": int(len(store.deleted_ids))}


def is_behind(store: "FeatureStore", view: StoreView, state: Mapping[str, Any]) -> bool:
    """Whether the store changed since ``state``'s coverage was recorded."""
    return coverage(store, view) != {key: int(state.get(key, -1)) for key in
                                     ("covered_next_id", "covered_rows", "covered_deleted")}
