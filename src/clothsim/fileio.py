"""Durable file writes: a file is either its old self or complete, never half-written.

Every write goes to a temporary file in the same folder, is flushed to disk (``fsync``), then renamed
over the target, and the folder itself is flushed so the rename survives a power cut. Writers of data
files get back the size and SHA-256 of what they wrote, computed while writing, so a manifest can record
checksums without reading the file again.

A full disk (or a quota, a read-only remount, an I/O error) surfaces as :class:`DiskWriteError`, a
:class:`~clothsim.errors.ClothsimError` naming the file, so the CLI prints one line instead of a
traceback; the temporary file is removed on the way out.

Fault injection (for the crash-consistency tests): every durable step calls :func:`fault_point`. With
``CLOTHSIM_FAULT_AT=N`` in the environment the N-th step (counted from 1 in this process) kills the
process with SIGKILL (``CLOTHSIM_FAULT_KIND=kill``, the default), fails with ENOSPC
(``CLOTHSIM_FAULT_KIND=enospc``) or stops the process with SIGSTOP until it gets SIGCONT
(``CLOTHSIM_FAULT_KIND=stop``: a writer caught in the middle, for two-writer tests); ``CLOTHSIM_FAULT_MATCH=TEXT`` counts only the steps whose name contains
TEXT (e.g. ``rename manifest.json``: the N-th commit, wherever other writes fall);
``CLOTHSIM_FAULT_TRACE=FILE`` appends each counted step's name to FILE. Without these variables a step costs one
dictionary lookup.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np

from clothsim.errors import ClothsimError

# Read once at import: os.umask can only be read by setting it, which is not thread-safe later on.
_UMASK = os.umask(0)
os.umask(_UMASK)

FAULT_AT_ENV = "CLOTHSIM_FAULT_AT"
FAULT_KIND_ENV = "CLOTHSIM_FAULT_KIND"
FAULT_TRACE_ENV = "CLOTHSIM_FAULT_TRACE"
FAULT_MATCH_ENV = "CLOTHSIM_FAULT_MATCH"
_fault_count = 0

# Errors that mean "the disk cannot take this write" rather than "the caller named a wrong path".
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})
_CHUNK = 16 * 1024 * 1024


class DiskWriteError(ClothsimError, OSError):
    """A write failed for lack of space or another disk-level reason; the message names the file.

    Nothing half-written is left in place of the target: the previous version (if any) is intact.
    """


def _disk_error(exc: OSError, path: Path) -> DiskWriteError:
    reason = exc.strerror or str(exc)
    err = DiskWriteError(exc.errno, f"cannot write {path}: {reason}; the previous version is intact. "
                                    "Free some space (or fix the disk) and run the same command again")
    err.filename = str(path)
    return err


def fault_point(name: str) -> None:
    """One durable step; see the module docstring for the fault-injection environment variables."""
    trace, at = os.environ.get(FAULT_TRACE_ENV), os.environ.get(FAULT_AT_ENV)
    if trace is None and at is None:
        return
    match = os.environ.get(FAULT_MATCH_ENV)
    if match and match not in name:
        return
    global _fault_count
    _fault_count += 1
    if trace:
        with open(trace, "a", encoding="utf-8") as fh:
            fh.write(f"{_fault_count}\t{name}\n")
    if at is not None and int(at) == _fault_count:
        kind = os.environ.get(FAULT_KIND_ENV, "kill")
        if kind == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        os.kill(os.getpid(), signal.SIGSTOP if kind == "stop" else signal.SIGKILL)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


@dataclass(frozen=True)
class FileDigest:
    """Size in bytes and SHA-256 (hex) of a file as written."""

    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "sha256": self.sha256}


#: The checksum of files a reader checks whole before serving them (index backends' files): xxHash's XXH3
#: (128 bits) runs at memory speed, about ten times SHA-256 (docs/benchmarks.md), so checking a 5 GB graph
#: costs a fraction of a second. It detects damage, not an
#: attacker who can also rewrite the record beside the file, which no checksum kept there could.
FAST_CHECKSUM = "xxh3_128"


def new_hash(algorithm: str = "sha256") -> Any:
    """A streaming hash object (``update``/``hexdigest``): ``sha256`` or :data:`FAST_CHECKSUM`."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == FAST_CHECKSUM:
        import xxhash

        return xxhash.xxh3_128()
    raise ValueError(f"unknown checksum algorithm {algorithm!r}; expected sha256 or {FAST_CHECKSUM}")


class _HashingWriter:
    """A binary file wrapper that hashes and counts what goes through it."""

    def __init__(self, fh: BinaryIO, label: str, algorithm: str = "sha256") -> None:
        self._fh = fh
        self._label = label
        self._hash = new_hash(algorithm)
        self.size = 0
        self._writes = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self._writes == 1:
            fault_point(f"write-middle {self._label}")  # a kill here leaves a half-written temporary file
        self._writes += 1
        self._hash.update(view)
        self.size += len(view)
        return self._fh.write(view)

    def flush(self) -> None:
        self._fh.flush()

    def digest(self) -> FileDigest:
        return FileDigest(self.size, self._hash.hexdigest())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it replaces ``path`` in one rename.

    Raises:
        DiskWriteError: the disk is full (or read-only, or failing); the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file 0600; give it the mode an ordinary open() would (0666 less the umask).
    os.chmod(tmp_path, 0o666 & ~_UMASK)
    try:
        fault_point(f"write {path.name}")
        yield tmp_path
        fault_point(f"fsync {path.name}")
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        fault_point(f"rename {path.name}")
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except OSError as exc:
        if exc.errno in _DISK_ERRNOS and not isinstance(exc, DiskWriteError):
            raise _disk_error(exc, path) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | Path, data: bytes) -> FileDigest:
    """Write ``data`` atomically; returns its size and checksum."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = _HashingWriter(fh, path.name)
        writer.write(data)
    return writer.digest()


def write_stream(path: str | Path, write: Any, algorithm: str = FAST_CHECKSUM) -> tuple[int, str]:
    """Write a file atomically through ``write(file)`` (e.g. an engine's serializer given a file-like
    object); returns its size and checksum, computed while writing (the file is never read back).

    Raises:
        DiskWriteError: the disk is full (or read-only, or failing); the previous version is intact.
    """
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = _HashingWriter(fh, path.name, algorithm)
        write(writer)
    return writer.size, writer.hexdigest()


def file_checksum(path: str | Path, algorithm: str = FAST_CHECKSUM) -> tuple[int, str]:
    """Size and checksum (hex) of a file on disk, read in chunks (memory stays bounded)."""
    digest = new_hash(algorithm)
    size = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
            size += n
    return size, digest.hexdigest()


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a file written by :func:`write_jsonl` (blank lines are skipped)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_npy(path: str | Path, array: np.ndarray) -> FileDigest:
    """Write ``array`` as a ``.npy`` file atomically; returns the file's size and checksum."""
    array = np.ascontiguousarray(array)
    return write_npy_parts(path, [array], array.shape, array.dtype)


def write_npy_parts(
    path: str | Path, parts: Iterable[np.ndarray], shape: tuple[int, ...], dtype: Any
) -> FileDigest:
    """Write a ``.npy`` file of ``shape`` from row blocks that arrive one at a time (bounded memory).

    Raises:
        ValueError: the parts do not add up to ``shape``.
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    rows = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = _HashingWriter(fh, path.name)
        np.lib.format.write_array_header_1_0(writer, header)
        for part in parts:
            part = np.ascontiguousarray(part, dtype=dtype)
            if part.shape[1:] != tuple(shape[1:]):
                raise ValueError(f"{path}: block of shape {part.shape} does not fit an array of shape {shape}")
            flat = part.reshape(-1).view(np.uint8)
            for lo in range(0, flat.size, _CHUNK):
                writer.write(flat[lo : lo + _CHUNK])
            rows += part.shape[0] if part.ndim else 1
        if rows != (shape[0] if shape else 1):
            raise ValueError(f"{path}: {rows} rows written, the header says {shape}")
    return writer.digest()


def write_parquet(path: str | Path, table: Any, row_group_size: int | None = None) -> FileDigest:
    """Write a pyarrow table as a Parquet file atomically; returns the file's size and checksum."""
    import pyarrow.parquet as pq

    path = Path(path)
    with atomic_path(path) as tmp:
        # A CRC per page, checked by readers that ask for it: a hit's row group is then checked as it is read.
        pq.write_table(table, str(tmp), compression="zstd", row_group_size=row_group_size, write_page_checksum=True)
        # Hashed from the page cache right after writing: small next to the vectors, and one code path.
        digest = file_digest(tmp)
    return digest


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file on disk, read in chunks."""
    return file_digest(path).sha256


def file_digest(path: str | Path) -> FileDigest:
    """Size and SHA-256 of a file on disk, read in chunks (memory stays bounded)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_CHUNK)
            if not block:
                break
            digest.update(block)
            size += len(block)
    return FileDigest(size, digest.hexdigest())


def remove_path(path: str | Path) -> None:
    """Delete a file or a folder tree if it is there (a durable step, so faults can be injected)."""
    path = Path(path)
    try:
        fault_point(f"remove {path.name}")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError as exc:
        if exc.errno in _DISK_ERRNOS and not isinstance(exc, DiskWriteError):
            raise _disk_error(exc, path) from exc
        raise


def rename_path(src: str | Path, dst: str | Path) -> None:
    """Rename ``src`` to ``dst`` (same file system) and flush the folder(s)."""
    src, dst = Path(src), Path(dst)
    try:
        fault_point(f"rename {src.name} -> {dst.name}")
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in _DISK_ERRNOS and not isinstance(exc, DiskWriteError):
            raise _disk_error(exc, dst) from exc
        raise
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)
