"""The index a server searches, kept in step with its folder: after a commit, new searches see the new state.

An index folder changes under a running server when ``clothsim index`` syncs or rebuilds it, or when a
REST write commits (in this process or in another worker). The server searches one :class:`Snapshot` at a
time: an open index whose store caches are filled and whose files are all mapped, so it keeps answering
exactly as it did when it was opened even while its files are replaced (a store never changes a file
it has written; removed files stay readable through their mappings). :class:`IndexFollower` holds the
current snapshot and replaces it:

* before each request, and every ``poll_s`` seconds while none come, it compares the folder's
  ``manifest.json`` (its inode, size and mtime: one ``stat``) with the one the current snapshot was opened
  from; when it changed and no ``clothsim index`` run is half-way (the store's sync marker), it opens the
  folder again, warms the new snapshot, then switches to it (a request that noticed waits for that, so a
  write acknowledged by another worker process is never missed by a later search);
* a writer in this process publishes the snapshot it committed at once (:meth:`IndexFollower.publish`),
  before it acknowledges the write, so a write is visible to every search that starts after it.

A request takes the current snapshot once (:meth:`IndexFollower.use`) and uses it to the end: a search
in flight finishes on the state it started on, and an id is never looked up in one state and ranked in
another. A replaced snapshot is closed once the last request using it is done. If reopening fails
(a damaged new state, or an index rebuilt with another encoder), the current snapshot keeps serving and
the reason is logged once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from clothsim.errors import ClothsimError
from clothsim.features.store import MANIFEST, FeatureStore
from clothsim.index.base import WarmableBackend
from clothsim.defaults import DEFAULT_FOLLOW_S
from clothsim.similarity_index import SimilarityIndex

logger = logging.getLogger(__name__)

#: Tries to open a folder whose state keeps changing while it is opened, before the current state serves on.
OPEN_ATTEMPTS = 20
#: Longest wait for a writer of this process to publish what it commits.
LOCAL_WRITE_WAIT_S = 60.0

Signature = tuple[int, int, int, int]


def manifest_signature(root: str | os.PathLike[str]) -> Signature | None:
    """What identifies the committed state of an index folder: the manifest's device, inode, size and
    mtime (a commit renames a new manifest into place). ``None`` while there is none (a rebuild swapping
    folders)."""
    try:
        st = os.stat(Path(root) / MANIFEST)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Snapshot:
    """One committed state of an index, open and warmed, with what requests read from it.

    Attributes:
        index: The open index (store, encoder, backend).
        categories: Live item count per category.
        generation: The store's commit counter when it was opened.
        signature: The manifest it was opened from (:func:`manifest_signature`).
    """

    def __init__(self, index: SimilarityIndex, signature: Signature | None) -> None:
        self.index = index
        self.signature = signature
        self.generation = int(index.store.manifest.get("generation", 0))
        self.categories = index.categories()
        self._users = 0
        self._retired = False
        self._closed = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.index)

    def _acquire(self) -> None:
        with self._lock:
            self._users += 1

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            close = self._retired and self._users == 0 and not self._closed
            self._closed = self._closed or close
        if close:
            self._close()

    def _retire(self) -> None:
        with self._lock:
            self._retired = True
            close = self._users == 0 and not self._closed
            self._closed = self._closed or close
        if close:
            self._close()

    def _close(self) -> None:
        close = getattr(self.index.backend, "close", None)  # a database backend's connection (Milvus)
        if close is not None:
            try:
                close()
            except ClothsimError as exc:
                logger.warning("closing a replaced index snapshot: %s", exc)


def warm_snapshot(index: SimilarityIndex) -> None:
    """Fill the store's lazily built caches, map every segment, warm the backend and run one search, so
    requests only read what is loaded and the snapshot stays whole if its files are removed later."""
    store = index.store
    store.warm()
    for _segment, _vectors, _positions in store.iter_segments():
        pass  # maps every segment file now
    if isinstance(index.backend, WarmableBackend):
        index.backend.warm()
    query = first_live_vector(index)
    if query is not None:
        index.backend.search(query, 1)


class IndexFollower:
    """Holds the current :class:`Snapshot` of an index folder and replaces it when the folder changes.

    Args:
        index: The index as opened at start-up (already warmed by the caller).
        backend_options: Search-time backend options the server was started with (kept on reopening).
        poll_s: Seconds between looks at the folder; ``0`` never looks (only :meth:`publish` changes it).
        on_swap: Called with each new snapshot once requests use it (metrics).
    """

    def __init__(self, index: SimilarityIndex, *, backend_options: dict[str, Any] | None = None,
                 poll_s: float = DEFAULT_FOLLOW_S, on_swap: Callable[[Snapshot], None] | None = None) -> None:
        if poll_s < 0:
            raise ValueError(f"poll_s must not be negative, got {poll_s}")
        self.root = Path(index.store.root)
        self.encoder = index.encoder
        self.backend_options = dict(backend_options or {})
        self.poll_s = float(poll_s)
        self._on_swap = on_swap
        self._current = Snapshot(index, manifest_signature(self.root))
        self._swap_lock = threading.Lock()  # one reopen or publish at a time
        self._refused: Signature | None = None  # a state that failed to open, not retried until it changes
        self._pending: Signature | None = None  # a half-way `clothsim index` state, not served
        self._local_writers = 0  # commits in this process whose writer publishes them itself
        self._writers_done = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0

    @property
    def current(self) -> Snapshot:
        """The snapshot new requests get (for facts that need no consistency across calls)."""
        return self._current

    @contextmanager
    def use(self) -> Iterator[Snapshot]:
        """The current snapshot, kept open until the block ends even if a newer one replaces it."""
        while True:
            snapshot = self._current
            snapshot._acquire()
            if not snapshot._retired:
                break
            snapshot._release()  # replaced between the read and the acquire: take the new one
        try:
            yield snapshot
        finally:
            snapshot._release()

    # ----- following the folder ----------------------------------------------------------------
    def start(self) -> None:
        """Start looking at the folder every ``poll_s`` seconds (in a daemon thread)."""
        if self.poll_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="clothsim-index-follower", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop looking at the folder (the current snapshot stays usable)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the follower must outlive any one failed look; logged
                logger.exception("could not check %s for changes; the current state keeps serving", self.root)

    @contextmanager
    def local_commit(self) -> Iterator[None]:
        """Around a commit by a writer of this process that will :meth:`publish` it. Meanwhile a request
        that finds the folder changed waits for that publication instead of opening the folder itself:
        the writer's fresh state holds whatever another process committed before it, so waiting is what
        keeps a write acknowledged elsewhere visible here, and opening the folder twice is avoided."""
        with self._writers_done:
            self._local_writers += 1
        try:
            yield
        finally:
            with self._writers_done:
                self._local_writers -= 1
                self._writers_done.notify_all()

    def check(self) -> bool:
        """Open the folder again if its committed state changed; returns whether requests now search a
        new snapshot. Cheap when nothing changed (one ``stat``), so it may run before every request: a
        write acknowledged by another worker process is then seen by the next search here."""
        for _attempt in range(OPEN_ATTEMPTS):
            signature = manifest_signature(self.root)
            if signature is None or signature in (self._current.signature, self._refused, self._pending):
                return False
            with self._writers_done:
                if self._local_writers:
                    before = self._current
                    self._writers_done.wait_for(lambda: not self._local_writers, timeout=LOCAL_WRITE_WAIT_S)
                    if self._current is not before:
                        # The writer took the lock after the state seen above was committed, so what it
                        # published holds that state.
                        return True
                    continue  # it published nothing (its commit failed): look again
            opened = self._open(signature)
            if opened is not None:
                return opened
            # The folder changed again while it was being opened (its files replaced): open the newer state.
        return False

    def _open(self, signature: Signature) -> bool | None:
        """Open and switch to the folder's state ``signature``; ``None`` when the folder moved on meanwhile."""
        with self._swap_lock:
            if signature == self._current.signature:
                return False  # published meanwhile
            started = time.perf_counter()
            try:
                if FeatureStore.open(self.root, allow_unfinished=True, verify=False, check_files=False).sync_pending:
                    # `clothsim index` is half-way: its intermediate commits are not a catalogue to serve.
                    self._pending = signature
                    return False
                index = SimilarityIndex.open(self.root, encoder=self.encoder, backend_options=self.backend_options)
                if index.store.sync_pending:
                    return None  # a run started between the two reads
                warm_snapshot(index)
            except Exception as exc:  # noqa: BLE001 - whatever stops a state from opening, the one before serves on
                if manifest_signature(self.root) != signature:
                    return None
                self._refused = signature
                logger.error("%s changed but cannot be opened (%s); still serving the state from before",
                             self.root, exc)
                return False
            self._swap(Snapshot(index, signature))
        logger.info("%s changed: now serving %d items (generation %d), opened in %.2f s", self.root,
                    len(index), self._current.generation, time.perf_counter() - started)
        return True

    def publish(self, index: SimilarityIndex, signature: Signature | None) -> Snapshot:
        """Make ``index`` (a state this process just committed, warmed by :func:`warm_snapshot`) the one
        new requests search; ``signature`` is the manifest it committed."""
        with self._swap_lock:
            snapshot = Snapshot(index, signature)
            self._swap(snapshot)
        return snapshot

    def _swap(self, snapshot: Snapshot) -> None:
        old = self._current
        self._current = snapshot
        self.reloads += 1
        old._retire()
        if self._on_swap is not None:
            self._on_swap(snapshot)


def first_live_vector(index: SimilarityIndex) -> np.ndarray | None:
    """A stored vector to warm a backend with (``None`` for an empty index)."""
    live = index.store.live_ids()
    return index.store.vector(int(live[0]))[None, :] if live.size else None
