"""What an approximate or database backend keeps beside the store, and the bookkeeping of an open one.

Every such backend keeps its files in ``store.root / "backends" / <backend name>``; the small
``state.json`` there is the commit record: it names the engine file (or database collection) that is
current and what part of the store it covers (``covered_next_id``: every row below that id was
added; ``covered_deleted``: how many of the store's tombstones were mirrored). A new engine file is
written beside the old one and ``state.json`` is switched with one atomic rename, so a crash leaves
the previous valid state. Here too: the checks of the saved files, the lock that keeps searches away
from an engine being changed, build progress in the log, and quieting FAISS's loader.

Nothing here imports FAISS or pymilvus; each backend module imports its engine itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from clothsim.fileio import FAST_CHECKSUM, file_checksum, write_json
from clothsim.index.base import BackendIndexError, backend_dir, rebuild_hint

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore
    from clothsim.index.ann_search import StoreView

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_FORMAT = 1
#: The key of ``state.json``'s checksum of its own content: a changed digit in it (``covered_next_id``,
#: ``ntotal``) would otherwise pass every check and give wrong answers. Records written before it lack it.
STATE_CHECKSUM = "state_sha256"


def state_checksum(state: Mapping[str, Any]) -> str:
    """SHA-256 of the record's canonical JSON, its own checksum left out (as the store manifest's)."""
    body = {k: v for k, v in state.items() if k != STATE_CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
                          ).hexdigest()


def quiet_faiss_loader() -> None:
    """FAISS's loader logs every CPU-feature probe at INFO (eight lines per process, on every command);
    unless someone set its level, only its warnings are shown."""
    loader = logging.getLogger("faiss.loader")
    if loader.level == logging.NOTSET:
        loader.setLevel(logging.WARNING)


# ----- the commit record -------------------------------------------------------------------------
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
    # After the format check: a newer clothsim may checksum its records another way.
    if STATE_CHECKSUM in state and state[STATE_CHECKSUM] != state_checksum(state):
        raise BackendIndexError(f"{path} does not match its own checksum ({STATE_CHECKSUM}): it was damaged or "
                                "edited; " + rebuild_hint(store, name))
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
    record[STATE_CHECKSUM] = state_checksum(record)
    write_json(backend_dir(store, name) / STATE_FILE, record)


#: Saved files up to this many bytes in all are checked whole when an index opens; bigger ones in a
#: thread started at open, which the first search waits for (hashing them would delay every open).
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


# ----- coverage: what part of the store a backend holds -------------------------------------------
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


# ----- an open backend -----------------------------------------------------------------------------
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
