"""The ``milvus`` backend: a Milvus collection through pymilvus's ``MilvusClient``.

One code path from a laptop to a cluster, chosen by the address alone:

* by default a **Milvus Lite** database inside the index folder
  (``<index>/backends/milvus/milvus.db``): embedded, nothing to start, one process at a time;
* ``uri=http://HOST:19530`` (``--backend-option uri=...``): a Milvus server or cluster, shared by any
  number of processes and machines. The token, if the server wants one, is read from the environment
  variable named by ``token_env`` (default ``MILVUS_TOKEN``) and never written to disk.

Rows are keyed by clothsim id; ``category`` and ``split`` are scalar fields used in filter expressions;
add and delete map to upsert and delete. Each build creates a fresh collection ``<collection>_<hex>``
and then points the alias ``<collection>`` and ``state.json`` at it, so a failed rebuild leaves the
previous collection in use.

Damage is never served: every save of a Milvus Lite database records the size and checksum of each of
the collection's data and index files in ``state.json``, checked before the first search (at open when
small, else in a thread the first search waits for); and every hit, whatever the database, is re-scored
against the store's vector, a score that disagrees being refused
(:func:`~clothsim.index.ann_search.checked_hits`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from clothsim.data.records import CatalogRecord
from clothsim.errors import ClothsimError, UsageError
from clothsim.index.ann_search import (
    EXACT_BELOW,
    StoreView,
    check_queries,
    checked_hits,
    complete_rows,
    exact_hits,
    finish_rows,
    iter_live_blocks,
    rows_as_arrays,
)
from clothsim.index.ann_state import (
    FileCheck,
    Progress,
    SavedFile,
    coverage,
    is_behind,
    read_state,
    record_file,
    saved_files_problems,
    write_state,
)
from clothsim.index.base import (
    BackendIndexError,
    BackendUnavailable,
    OptionSpec,
    SearchHit,
    check_build_options_match,
    check_positive,
    coerce_options,
    rebuild_hint,
    with_defaults,
)
from clothsim.index.milvus_connection import (
    NAME,
    NoStore,
    collection_folder,
    connect,
    default_uri,
    drain_lite,
    engine_errors,
    error_reason,
    is_local,
    load_pymilvus,
    lost_connection,
    quiet_engine_logs,
    release_lite,
    unreachable_message,
)

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore

logger = logging.getLogger(__name__)

# Milvus's error code for a collection that is not loaded (a server's merr and Milvus Lite's alike).
_COLLECTION_NOT_LOADED = 101
INDEX_TYPES = ("HNSW", "IVF_FLAT", "FLAT", "AUTOINDEX")
# Index types that keep every vector as given (AUTOINDEX lets a server pick a quantized one).
EXACT_INDEX_TYPES = ("HNSW", "IVF_FLAT", "FLAT")
MAX_TOPK = 16384  # Milvus refuses larger limits
_QUERY_BATCH = 256  # queries per search request (bounds the message size)
_DELETE_BATCH = 10_000

MILVUS_OPTIONS: dict[str, OptionSpec] = {
    "uri": OptionSpec(str, None, False, "http://HOST:19530 for a Milvus server or cluster; default a Milvus "
                                        "Lite database in the index folder"),
    "token_env": OptionSpec(str, "MILVUS_TOKEN", False, "environment variable holding the server token"),
    "db_name": OptionSpec(str, None, True, "database on the server (default: the server's default)"),
    "collection": OptionSpec(str, "clothsim", True, "collection alias (the data is in <collection>_<hex>)"),
    "index_type": OptionSpec(str, "HNSW", True, f"vector index: {', '.join(INDEX_TYPES)}"),
    "M": OptionSpec(int, 32, True, "HNSW neighbours per node (as faiss-hnsw)"),
    "efConstruction": OptionSpec(int, 80, True, "HNSW search depth while building"),
    "nlist": OptionSpec(int, 1024, True, "IVF_FLAT lists"),
    "efSearch": OptionSpec(int, 128, False, "HNSW search depth per query; also a per-query argument"),
    "nprobe": OptionSpec(int, 32, False, "IVF_FLAT lists scanned per query; also a per-query argument"),
    "insert_batch": OptionSpec(int, 1000, False, "rows per insert request"),
    "timeout": OptionSpec(float, 120.0, False, "seconds per request"),
    "exact_below": OptionSpec(int, EXACT_BELOW, False, "a category filter matching at most this many live items "
                                                       f"is searched exactly (default {EXACT_BELOW}; 0: never)"),
    "chunk_rows": OptionSpec(int, 16384, False, "store rows read at a time"),
}

# Milvus's expression grammar forbids a raw newline or carriage return inside a string literal and knows only
# the escapes \n \r \t \" \\ here (\x, \u and octal are refused); other control characters may stand raw.
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _quote(text: str) -> str:
    """A Milvus expression string literal (quotes, backslashes, newlines, returns and tabs escaped)."""
    return '"' + text.translate(_ESCAPES) + '"'


def category_filter(category: str | Sequence[str] | None) -> str:
    """The filter expression of a category restriction ("" for none)."""
    if category is None:
        return ""
    names = [category] if isinstance(category, str) else sorted(set(category))
    return f"category in [{', '.join(_quote(n) for n in names)}]"


class MilvusIndex:
    """An open Milvus collection mirroring a feature store (see the module docstring)."""

    name = NAME

    def __init__(self, store: "FeatureStore", client: Any, uri: str, state: dict[str, Any],
                 options: dict[str, Any], check: FileCheck | None = None) -> None:
        self.store = store
        self._check = check
        self.uri = uri
        self._client = client
        self._state = dict(state)
        self._options = options
        self._view = StoreView(store)
        self._lock = threading.Lock()
        self._dirty = False
        self._closed = False

    # ----- facts ---------------------------------------------------------------------------
    @property
    def collection(self) -> str:
        """The physical collection holding the data (the alias is ``state["collection"]``)."""
        return str(self._state["physical"])

    @property
    def state(self) -> dict[str, Any]:
        return dict(self._state)

    @property
    def local(self) -> bool:
        """Whether this is an embedded Milvus Lite database."""
        return is_local(self.uri)

    @property
    def where(self) -> str:
        """How messages name the database: the Lite file or the server."""
        return f"the Milvus Lite database {self.uri}" if self.local else f"Milvus at {self.uri}"

    def __len__(self) -> int:
        return len(self.store)

    def categories(self) -> dict[str, int]:
        return self._view.categories()

    def count(self) -> int:
        """Rows the collection holds now (a ``count(*)`` query)."""
        rows = self._call("count", self._client.query, self.collection, filter="", output_fields=["count(*)"],
                          timeout=self._options["timeout"])
        return int(rows[0]["count(*)"])

    def _call(self, what: str, fn, *args, **kwargs):
        errors = engine_errors()
        try:
            return fn(*args, **kwargs)
        except errors as exc:
            if getattr(exc, "code", None) != _COLLECTION_NOT_LOADED:
                raise self._failed(what, exc) from None
        # The collection is not loaded: Milvus Lite's server comes back from a restart with it released (a
        # server that lost its load state would too). Load it again, once, so that a long-running `clothsim
        # serve` answers again without a restart of its own.
        logger.warning("%s: collection %s was released (the server restarted?); loading it again", self.where,
                       self.collection)
        try:
            self._client.load_collection(self.collection, timeout=self._options["timeout"])
            return fn(*args, **kwargs)
        except errors as exc:
            raise self._failed(what, exc) from None

    def _failed(self, what: str, exc: Exception) -> ClothsimError:
        message = f"Milvus at {self.uri} failed to {what} collection {self.collection}: {error_reason(exc)}"
        if lost_connection(exc):
            return BackendUnavailable(f"{message}; is the server running?")
        return BackendIndexError(message)

    # ----- searching -----------------------------------------------------------------------
    def _search_options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        if not overrides:
            return self._options
        given = coerce_options(NAME, MILVUS_OPTIONS, overrides)
        fixed = [n for n in given if MILVUS_OPTIONS[n].build or n in ("uri", "token_env")]
        if fixed:
            raise UsageError(f"{', '.join(fixed)} cannot change per query")
        merged = {**self._options, **{k: v for k, v in given.items() if v is not None}}
        check_positive(NAME, merged, ["efSearch", "nprobe"])
        return merged

    def _behind(self) -> bool:
        return is_behind(self.store, self._view, self._state)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        category: str | Sequence[str] | None = None,
        exclude_ids: Sequence[int] | None = None,
        **search_options: Any,
    ) -> list[list[SearchHit]]:
        """Top ``k`` per query; the category restriction is a Milvus filter expression."""
        options = self._search_options(search_options)
        queries, exclude = check_queries(queries, self.store.dim, k, exclude_ids)
        self.wait_for_check()
        if self._behind():
            self.refresh()
        all_ids, _ = self._view.snapshot()
        mask = self._view.allowed_rows(category)
        n_allowed = self._view.allowed_count(category)
        if n_allowed == 0 or queries.shape[0] == 0:
            return [[] for _ in range(queries.shape[0])]
        wanted = k + (exclude is not None)
        if (category is not None and n_allowed <= options["exact_below"]) or wanted > MAX_TOPK:
            return exact_hits(self.store, queries, k, category, exclude)
        ids, scores = self._engine_search(queries, wanted, category, options)
        index_type = self._state["build"]["index_type"]
        rows = finish_rows(ids, scores, k, exclude, all_ids, mask)
        rows, redone = complete_rows(self.store, queries, k, rows, mask, all_ids, exclude)
        if redone:
            logger.debug("milvus: %d of %d queries came back short and were answered exactly", redone, len(rows))
        # These index types keep the vectors as they were given, so their scores must be the store's.
        return checked_hits(self.store, queries, rows, f"{self.where} (collection {self.collection})",
                            rebuild_hint(self.store, NAME), engine_exact=index_type in EXACT_INDEX_TYPES)

    def neighbours(self, queries: np.ndarray, k: int,
                   exclude_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest live items as ``(ids, scores)`` arrays by the collection's own scores, padded
        with -1 / -inf (see :class:`~clothsim.index.base.NeighbourSearch`); the caller re-scores and
        checks the ones it keeps."""
        options = self._search_options({})
        queries, exclude = check_queries(queries, self.store.dim, k, exclude_ids)
        self.wait_for_check()
        if self._behind():
            self.refresh()
        all_ids, _ = self._view.snapshot()
        mask = self._view.allowed_rows(None)
        wanted = k + (exclude is not None)
        if wanted > MAX_TOPK:
            from clothsim.index.exact import ExactIndex

            return ExactIndex(self.store).neighbours(queries, k, exclude_ids)
        ids, scores = self._engine_search(queries, wanted, None, options)
        return rows_as_arrays(finish_rows(ids, scores, k, exclude, all_ids, mask), k)

    def _engine_search(self, queries: np.ndarray, wanted: int, category: str | Sequence[str] | None,
                       options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The collection's ``wanted`` best per query, by its own scores, in batches of requests."""
        ids = np.full((queries.shape[0], wanted), -1, dtype=np.int64)
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        index_type = self._state["build"]["index_type"]
        params = {"ef": max(int(options["efSearch"]), wanted)} if index_type == "HNSW" else (
            {"nprobe": int(options["nprobe"])} if index_type == "IVF_FLAT" else {})
        expression = category_filter(category)
        for lo in range(0, queries.shape[0], _QUERY_BATCH):
            batch = queries[lo:lo + _QUERY_BATCH]
            result = self._call("search", self._client.search, self.collection, data=list(batch), limit=wanted,
                                filter=expression, anns_field="vector", output_fields=["id"],
                                search_params={"metric_type": "IP", "params": params},
                                timeout=options["timeout"])
            for q, found in enumerate(result):
                for j, hit in enumerate(list(found)[:wanted]):
                    ids[lo + q, j] = int(hit["id"])
                    scores[lo + q, j] = float(hit["distance"])
        return ids, scores

    # ----- the saved files (Milvus Lite) -----------------------------------------------------
    def wait_for_check(self) -> None:
        """Block until the check of the saved files started at open is over; raise if one is damaged."""
        if self._check is not None:
            self._check.wait()

    def warm(self) -> None:
        """Finish checking the saved files before any request is served."""
        self.wait_for_check()

    def verify(self) -> None:
        """Check every saved file of a Milvus Lite database against its checksum (reads them whole).

        Raises:
            BackendIndexError: a file is missing or damaged.
        """
        problems = saved_files_problems(saved_files(self.store, self._state, self.uri), True,
                                        rebuild_hint(self.store, NAME))
        if problems:
            raise BackendIndexError(problems[0])

    def _record_files(self) -> None:
        """The collection's files as they are now, into the state to save (Milvus Lite only): flushed and
        with their background index builds finished first, so nothing changes them after the record."""
        if not self.local:
            return
        self._call("flush", self._client.flush, self.collection, timeout=None)
        drain_lite(self.uri, self.collection)
        folder = collection_folder(self.uri, self.collection)
        db = Path(self.uri)
        self._state["files"] = [{**record_file(path), "file": str(path.relative_to(db))}
                                for path in sorted(folder.rglob("*")) if path.is_file()]

    # ----- changing ------------------------------------------------------------------------
    def _upsert_rows(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not ids.size:
            return
        categories = self._view.categories_of(ids)
        splits = [r.split or "" for r in self.store.records_for(ids)]
        batch = int(self._options["insert_batch"])
        for lo in range(0, ids.size, batch):
            # A row without a category gets "", which no filter names: unknown categories are refused first.
            rows = [{"id": int(i), "vector": v, "category": c or "", "split": s}
                    for i, v, c, s in zip(ids[lo:lo + batch], vectors[lo:lo + batch],
                                          categories[lo:lo + batch], splits[lo:lo + batch])]
            # upsert, not insert: replaying rows after a crash must not duplicate them.
            self._call("upsert into", self._client.upsert, self.collection, rows, timeout=self._options["timeout"])

    def add(
        self, vectors: np.ndarray, records: Sequence[CatalogRecord], failures: Sequence[dict[str, str]] = ()
    ) -> np.ndarray:
        """Append to the store, then upsert the rows into the collection (searchable at once)."""
        ids = self.store.append(vectors, records, failures=failures)
        self.refresh()
        return ids

    def delete(self, ids: Sequence[int]) -> int:
        """Tombstone in the store and delete from the collection."""
        removed = self.store.delete(ids)
        self.refresh()
        return removed

    def refresh(self) -> None:
        """Bring the collection in line with the store: upsert rows it lacks, delete tombstoned ids and
        ids a repair dropped from the store; after tombstones were reset, upsert every live row again."""
        with self._lock:
            all_ids, live = self._view.snapshot()
            covered = int(self._state["covered_next_id"])
            n_deleted = int(len(self.store.deleted_ids))
            tombstones_reset = n_deleted < int(self._state.get("covered_deleted", 0))
            # Upserts are idempotent, so replaying after a crash or a reset never duplicates a row.
            todo = live if tombstones_reset else (all_ids >= covered) & live
            if todo.any():
                progress = Progress("milvus catching up", int(todo.sum()))
                for ids, block in iter_live_blocks(self.store, todo, self._options["chunk_rows"]):
                    self._upsert_rows(ids, block)
                    progress.add(ids.size)
            old_rows = int(np.count_nonzero(all_ids < covered))
            if old_rows < int(self._state.get("covered_rows", old_rows)):
                self._delete_ids(np.setdiff1d(np.arange(covered, dtype=np.int64), all_ids))  # rows dropped
            if n_deleted != int(self._state.get("covered_deleted", 0)):
                self._delete_ids(np.asarray(self.store.deleted_ids, dtype=np.int64))
            now = coverage(self.store, self._view)
            now["covered_next_id"] = max(now["covered_next_id"], covered)
            if any(int(self._state.get(key, -1)) != value for key, value in now.items()):
                self._state.update(now)
                self._dirty = True

    def _delete_ids(self, ids: np.ndarray) -> None:
        for lo in range(0, ids.size, _DELETE_BATCH):
            self._call("delete from", self._client.delete, self.collection,
                       ids=[int(i) for i in ids[lo:lo + _DELETE_BATCH]], timeout=self._options["timeout"])

    def save(self) -> None:
        """Record how much of the store the collection covers (Milvus made the rows durable already) and,
        for Milvus Lite, the size and checksum of each of its files."""
        with self.store.writer(), self._lock:
            if self._dirty:
                self._record_files()
                write_state(self.store, NAME, self._state)
                self._dirty = False

    def close(self) -> None:
        """Close the connection; the embedded Milvus Lite server stops with the last index using it."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client.close()
        finally:
            if self.local:
                release_lite(self.uri)


def saved_files(store: "FeatureStore", state: dict[str, Any], uri: str) -> list[SavedFile]:
    """The Milvus Lite files ``state`` records (none for a server, or a state saved before records)."""
    db = Path(uri)
    return [SavedFile(db / str(f.get("file")), f) for f in state.get("files", [])] if is_local(uri) else []


class MilvusBackend:
    """The ``milvus`` plug-in: builds and reopens a collection over a store."""

    name = NAME
    description = ("Milvus collection via pymilvus: a Milvus Lite file in the index folder by default, a server "
                   "or cluster with uri=http://HOST:19530; options collection, index_type, M, efSearch, ...")

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Options checked and typed, without connecting (``clothsim evaluate`` calls it first)."""
        if "token" in options:
            raise UsageError("the milvus backend takes no token option: put the token in the environment variable "
                             "named by token_env (default MILVUS_TOKEN), so it is never written into the index")
        given = coerce_options(NAME, MILVUS_OPTIONS, options)
        check_positive(NAME, given, ["M", "efConstruction", "nlist", "efSearch", "nprobe", "insert_batch",
                                     "chunk_rows"])
        check_positive(NAME, given, ["exact_below"], minimum=0)
        if given.get("index_type") is not None and given["index_type"].upper() not in INDEX_TYPES:
            raise UsageError(f"milvus option index_type must be one of {', '.join(INDEX_TYPES)}, "
                             f"got {given['index_type']!r}")
        if given.get("index_type"):
            given["index_type"] = given["index_type"].upper()
        uri = given.get("uri")
        if uri and not (is_local(uri) or uri.split("://")[0] in ("http", "https", "tcp", "unix")):
            raise UsageError(f"milvus option uri must be http://HOST:PORT (a server) or a path ending in .db "
                             f"(Milvus Lite), got {uri!r}")
        load_pymilvus()
        return given

    def check_reachable(self, options: dict[str, Any]) -> None:
        """For a server address, connect once now (before hours of encoding); Lite needs nothing."""
        given = with_defaults(MILVUS_OPTIONS, self.check_options(options))
        if given["uri"] and not is_local(given["uri"]):
            connect(NoStore(), given["uri"], given, creating=True).close()

    def _runtime_options(self, given: dict[str, Any]) -> dict[str, Any]:
        resolved = with_defaults(MILVUS_OPTIONS, given)
        return {n: resolved[n] for n, spec in MILVUS_OPTIONS.items() if not spec.build}

    def build(self, store: "FeatureStore", **options: Any) -> MilvusIndex:
        """Create a fresh collection, insert every live vector, index it, then switch to it."""
        given = self.check_options(options)
        resolved = with_defaults(MILVUS_OPTIONS, given)
        uri = resolved["uri"] or default_uri(store)
        client = connect(store, uri, resolved, creating=True)
        pymilvus = load_pymilvus()
        previous = _previous_state(store)
        alias = resolved["collection"]
        physical = f"{alias}_{secrets.token_hex(4)}"
        build = {"index_type": resolved["index_type"], "collection": alias, "db_name": resolved["db_name"]}
        if resolved["index_type"] == "HNSW":
            build.update(M=resolved["M"], efConstruction=resolved["efConstruction"])
            params: dict[str, Any] = {"M": resolved["M"], "efConstruction": resolved["efConstruction"]}
        elif resolved["index_type"] == "IVF_FLAT":
            build.update(nlist=resolved["nlist"])
            params = {"nlist": resolved["nlist"]}
        else:
            params = {}
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=store.dim)
        schema.add_field("category", pymilvus.DataType.VARCHAR, max_length=65535)
        schema.add_field("split", pymilvus.DataType.VARCHAR, max_length=65535)
        index_params = client.prepare_index_params()
        index_params.add_index(field_name="vector", index_type=resolved["index_type"], metric_type="IP",
                               params=params)
        for param in index_params:
            # pymilvus 3 sends build parameters as flat keys, which Milvus servers read but Milvus Lite
            # ignores (it reads one JSON "params" entry, as older clients sent); send both.
            configs = getattr(param, "_configs", None)
            if isinstance(configs, dict) and params:
                configs["params"] = dict(params)
        state = {"physical": physical, "uri": resolved["uri"], "covered_next_id": 0, "covered_rows": 0,
                 "covered_deleted": 0, "build": build}
        index = MilvusIndex(store, client, uri, state, self._runtime_options(given))
        started = time.perf_counter()
        try:
            # Strong consistency: an item added is visible to the next search. The index is created without
            # waiting on it (Milvus Lite has no timestamp service to wait with); sealed segments get it.
            index._call("create", client.create_collection, physical, schema=schema, consistency_level="Strong",
                        timeout=resolved["timeout"])
            index._call("index", client.create_index, physical, index_params, timeout=resolved["timeout"],
                        sync=False)
            index._call("load", client.load_collection, physical, timeout=resolved["timeout"])
            _, live = index._view.snapshot()
            progress = Progress("milvus build", int(live.sum()))
            for ids, block in iter_live_blocks(store, live, resolved["chunk_rows"]):
                index._upsert_rows(ids, block)
                progress.add(ids.size)
            index._call("flush", client.flush, physical, timeout=None)  # seal the segments: indexes get built
            _wait_for_index(index, physical)
            index._state.update(coverage(store, index._view))
        except BaseException:
            _drop_quietly(client, physical)
            index.close()
            raise
        same_place = bool(previous) and (previous.get("uri") or None) == (resolved["uri"] or None)
        try:
            _point_alias(client, alias, physical,
                         alias_exists=same_place and previous.get("build", {}).get("collection") == alias)
            index._dirty = True
            index.save()  # the commit point: from here on the new collection is the index
        except BaseException:
            index.close()  # the new collection stays until the next build: the old one may still be in use
            raise
        if same_place and previous.get("physical") not in (None, physical):
            _drop_quietly(client, previous["physical"])
        logger.info("milvus: built %s at %s over %d vectors in %.1f s", physical, uri, progress.done,
                    time.perf_counter() - started)
        return index

    def check_saved(self, store: "FeatureStore", *, full: bool = True) -> list[str]:
        """``state.json``, the Milvus Lite file's presence and, with ``full``, the collection itself: it is
        opened (Milvus Lite starts, or the server is reached) and its row count compared with the store."""
        try:
            state = read_state(store, NAME)
        except BackendIndexError as exc:
            return [str(exc)]
        uri = state.get("uri") or default_uri(store)
        if is_local(uri) and not Path(uri).exists():
            return [f"the Milvus Lite database {uri} is missing; {rebuild_hint(store, NAME)}"]
        problems = saved_files_problems(saved_files(store, state, uri), full, rebuild_hint(store, NAME))
        if problems or not full:
            return problems
        # Read-only, unlike open(): a check must report a damaged collection, not mend it on the way.
        runtime = {**self._runtime_options({}), "timeout": 10.0}  # a check should not hang on a dead server
        with quiet_engine_logs():
            try:
                client = connect(store, uri, runtime, creating=False)
            except BackendIndexError as exc:  # a missing or locked Lite file (a server out of reach raises)
                return [str(exc)]
            index = MilvusIndex(store, client, uri, state, runtime)
            try:
                if not client.has_collection(index.collection, timeout=runtime["timeout"]):
                    return [_missing_collection(index)]
                client.load_collection(index.collection, timeout=runtime["timeout"])
                if index._behind():
                    return []  # the store grew since: the next open catches up, nothing is damaged
                found, expected = index.count(), len(store)
                if found != expected:
                    return [_wrong_count(index, found, expected)]
            except (*engine_errors(), BackendIndexError) as exc:
                if lost_connection(exc):  # not damage: `clothsim verify` reports it as not checked
                    raise BackendUnavailable(unreachable_message(uri, error_reason(exc), runtime)) from None
                return [f"{index.where} cannot be read ({error_reason(exc)}); {rebuild_hint(store, NAME)}"]
            finally:
                index.close()
        return []

    def open(self, store: "FeatureStore", **options: Any) -> MilvusIndex:
        """Reconnect to the collection ``state.json`` names and check it still matches the store."""
        given = self.check_options(options)
        state = read_state(store, NAME)
        check_build_options_match(NAME, store, MILVUS_OPTIONS, given, state.get("build", {}))
        runtime = self._runtime_options(given)
        uri = runtime["uri"] or state.get("uri") or default_uri(store)
        with quiet_engine_logs():
            return self._open(store, state, runtime, uri)

    def _open(self, store: "FeatureStore", state: dict[str, Any], runtime: dict[str, Any], uri: str) -> MilvusIndex:
        files = saved_files(store, state, uri)
        if files and not Path(uri).exists():
            raise BackendIndexError(f"the Milvus Lite database {uri} is missing; {rebuild_hint(store, NAME)}")
        problems = saved_files_problems(files, False, rebuild_hint(store, NAME))
        if problems:  # a file cut short or gone: refused before Milvus Lite reads it
            raise BackendIndexError(problems[0])
        # Checksums before the first answer: now when the files are small, else in the background.
        check = FileCheck(files, rebuild_hint(store, NAME)) if files else None
        client = connect(store, uri, runtime, creating=False)
        index = MilvusIndex(store, client, uri, state, runtime, check=check)
        where = index.where
        try:
            if not client.has_collection(index.collection, timeout=runtime["timeout"]):
                raise BackendIndexError(_missing_collection(index))
            client.load_collection(index.collection, timeout=runtime["timeout"])
            if index._behind():
                logger.warning("%s covers the store only up to id %d; catching up", where, state["covered_next_id"])
                index.wait_for_check()  # the files recorded are checked before any of them changes
                index.refresh()
                _save_if_free(index)
            expected = len(store)
            found = index.count()
            if found > expected:  # tombstones lost (e.g. a damaged delete log): mirror them again
                index._delete_ids(np.asarray(store.deleted_ids, dtype=np.int64))
                found = index.count()
            if found != expected:
                raise BackendIndexError(_wrong_count(index, found, expected))
        except engine_errors() as exc:
            index.close()
            if lost_connection(exc):  # a server that is down is not a damaged index: no rebuild
                raise BackendUnavailable(unreachable_message(uri, error_reason(exc), runtime)) from None
            raise BackendIndexError(f"{where} cannot be read ({error_reason(exc)}); it is damaged; "
                                    f"{rebuild_hint(store, NAME)}") from None
        except BaseException:
            index.close()
            raise
        return index


def _save_if_free(index: MilvusIndex) -> None:
    """Save a collection caught up at open, so the files recorded are the files there (the rows added to a
    Milvus Lite database are in it at once); skipped when another process holds the index folder, whose
    own save then records them."""
    from clothsim.features.writer_lock import StoreBusyError

    try:
        index.save()
    except (StoreBusyError, OSError) as exc:  # busy, or a folder this reader may not write
        logger.info("%s: caught up, not saved (%s)", index.where, exc)


def _missing_collection(index: MilvusIndex) -> str:
    return (f"{index.where} has no collection {index.collection} (dropped, or the database was replaced); "
            f"{rebuild_hint(index.store, NAME)}")


def _wrong_count(index: MilvusIndex, found: int, expected: int) -> str:
    return (f"{index.where} holds {found} items in {index.collection}, the store {expected}: it is damaged or "
            f"was changed outside clothsim; {rebuild_hint(index.store, NAME)}")


def _wait_for_index(index: MilvusIndex, physical: str, poll_s: float = 0.5) -> None:
    """Wait until every sealed row is in the vector index, so the first searches are not brute force."""
    if index.local:
        drain_lite(index.uri, physical)
        return
    started = last_log = time.perf_counter()
    while True:
        info = index._call("describe the index of", index._client.describe_index, physical, "vector")
        pending = int(info.get("pending_index_rows", 0) or 0)
        if pending <= 0 or str(info.get("state", "Finished")) == "Failed":
            if str(info.get("state")) == "Failed":
                raise BackendIndexError(f"Milvus at {index.uri} failed to index {physical}: "
                                        f"{info.get('index_state_fail_reason', '')}")
            return
        now = time.perf_counter()
        if now - last_log > 30:
            last_log = now
            logger.info("milvus: %d rows of %s still being indexed (%.0f s)", pending, physical, now - started)
        time.sleep(poll_s)


def _previous_state(store: "FeatureStore") -> dict[str, Any] | None:
    try:
        return read_state(store, NAME)
    except BackendIndexError:
        return None


def _point_alias(client: Any, alias: str, physical: str, alias_exists: bool) -> None:
    """Make ``alias`` name the new collection, so other tools can query it by one stable name."""
    pymilvus = load_pymilvus()
    first, second = (client.alter_alias, client.create_alias) if alias_exists else (client.create_alias,
                                                                                    client.alter_alias)
    try:
        try:
            first(physical, alias)
        except pymilvus.MilvusException:
            second(physical, alias)
    except pymilvus.MilvusException as exc:
        logger.warning("milvus: could not point alias %r at %r (%s); the index works without it", alias, physical,
                       getattr(exc, "message", exc))


def _drop_quietly(client: Any, collection: str) -> None:
    try:
        client.drop_collection(collection)
    except load_pymilvus().MilvusException as exc:
        logger.warning("milvus: could not drop the old collection %r: %s", collection, getattr(exc, "message", exc))
