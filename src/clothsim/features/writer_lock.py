"""One writer per index folder: an advisory lock that holds across a whole command, ``--overwrite`` included.

The lock is a ``flock`` on ``<parent>/.<name>.lock``, a file *beside* the index folder rather than inside
it: ``clothsim index --overwrite`` builds the new index in ``<name>.rebuild`` and swaps the folders by
renaming them, and a lock held on the folder itself would stay with the old folder while a second
writer locked the new one. The file exists only while a writer holds it (the holder removes it before
unlocking, and a waiter that finds the file it locked unlinked tries again), so an index folder leaves
nothing beside it; a file a killed writer left is locked and removed by the next writer.

The kernel releases a ``flock`` when its holder dies, so a crash never leaves the folder locked.

Who holds the lock: a :class:`WriterLock` object (a store, a backend save) or, around a whole command,
:func:`hold_writer`: every lock of the same folder taken in the same thread while it is held joins it,
so the steps of one command do not refuse each other while a second command is refused at once.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from clothsim.errors import ClothsimError

logger = logging.getLogger(__name__)

_BUSY_ERRNOS = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class StoreBusyError(ClothsimError, RuntimeError):
    """Another process (or another store object) is writing this index folder."""


def lock_path(root: str | os.PathLike[str]) -> Path:
    """The lock file of the index folder ``root``: ``.<name>.lock`` beside it."""
    root = Path(os.path.abspath(root))
    return root.parent / f".{root.name}.lock"


def busy_message(root: str | os.PathLike[str]) -> str:
    """What a refused writer is told (one line, naming the folder)."""
    return (f"{root} is being written by another process (another `clothsim index`, possibly with "
            "--overwrite, or an open index adding items); nothing was changed: wait for it to finish, then "
            "run the command again")


class _Held:
    """One flock held by this process: its file descriptor and how many holders joined it."""

    def __init__(self, fd: int, path: Path, owner: object) -> None:
        self.fd = fd
        self.path = path
        self.owner = owner
        self.depth = 0


# Locks this process holds, by lock file; a flock on a second descriptor of the same file would refuse
# its own process, so a nested holder joins the existing one instead.
_HELD: dict[Path, _Held] = {}
_HELD_GUARD = threading.Lock()
# Per thread: the folders a command-wide hold_writer() covers, and the token that owns them.
_COMMAND = threading.local()


def _command_owner(path: Path) -> object | None:
    return getattr(_COMMAND, "owners", {}).get(path)


def _flock(path: Path, root: Path) -> int:
    """Open and lock ``path`` (creating it), retrying when the holder we waited for removed it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)  # a new index's parent, made as creating it would
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in _BUSY_ERRNOS:
                raise StoreBusyError(busy_message(root)) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one


class WriterLock:
    """The writer lock of one index folder, re-entrant within this object.

    Args:
        root: The index folder (it need not exist yet; its parent must).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._path = lock_path(root)
        self._depth = 0
        self._joined: _Held | None = None

    @property
    def held(self) -> bool:
        return self._depth > 0

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StoreBusyError` at once (it never waits)."""
        if self._depth:
            self._depth += 1
            return
        owner = _command_owner(self._path) or self
        with _HELD_GUARD:
            held = _HELD.get(self._path)
            if held is not None and held.owner is not owner:
                raise StoreBusyError(busy_message(self.root))
            if held is None:
                held = _Held(_flock(self._path, self.root), self._path, owner)
                _HELD[self._path] = held
            held.depth += 1
        self._joined = held
        self._depth = 1

    def release(self) -> None:
        """Give the lock back (the last holder removes the lock file, then unlocks it)."""
        if not self._depth:
            return
        self._depth -= 1
        if self._depth:
            return
        held, self._joined = self._joined, None
        if held is None:
            return
        with _HELD_GUARD:
            held.depth -= 1
            if held.depth:
                return
            _HELD.pop(held.path, None)
            try:
                os.unlink(held.path)  # while still locked: a waiter that opened it sees it gone and retries
            except OSError:
                pass  # a read-only or vanished parent: the next writer locks the file as it is
            fcntl.flock(held.fd, fcntl.LOCK_UN)
            os.close(held.fd)

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def hold_writer(root: str | os.PathLike[str]) -> Iterator[WriterLock]:
    """Hold the writer lock of ``root`` for a whole command; the command's own stores and backends (in
    this thread) join it, any other writer is refused at once with :class:`StoreBusyError`."""
    lock = WriterLock(root)
    path = lock_path(root)
    owners = getattr(_COMMAND, "owners", None)
    if owners is None:
        owners = _COMMAND.owners = {}
    outer = path not in owners
    if outer:
        owners[path] = lock
    try:
        lock.acquire()
        yield lock
    finally:
        lock.release()
        if outer:
            owners.pop(path, None)
