"""Adding and deleting catalogue items over REST, through the same crash-safe path as ``clothsim index``.

What a write does, in order:

1. the request is authorised (:mod:`clothsim.web.auth`), its fields checked, and its photo taken from the
   upload, from a file under a folder the server was allowed to read (``--write-path-root``), or from
   a URL under an allowed prefix (``--write-url-prefix``; redirects elsewhere are refused);
2. the photo is encoded like an upload search (memory budget, decoding on the compute threads, batched
   encoding); an uploaded or fetched photo is then stored durably (written beside, flushed, renamed) in
   the upload folder under its SHA-256, so the item's image lives as long as the item;
3. :class:`CatalogueWriter`, one thread per server process, takes every write waiting and applies them
   as one group: it opens the index folder afresh, takes the store's writer lock (the one ``clothsim
   index`` takes: one writer at a time, across processes; a busy folder is retried for
   ``busy_timeout_s``), checks that nobody committed in between, then adds through the backend
   (``backend.add``: one store commit), deletes (``backend.delete``: one commit), saves the backend and
   merges small segments; the store's transactions make each commit all or nothing, so a kill -9 at
   any moment loses no write that was acknowledged;
4. the committed state is warmed and published to this process's searches
   (:meth:`~clothsim.web.snapshot.IndexFollower.publish`), and only then are the requests answered:
   a search that starts after a write's answer sees it. Other worker processes see it at their next
   request (:mod:`clothsim.web.snapshot`).

An ``clothsim index`` half-way through a sync (its marker in the manifest) refuses writes until it is
finished: a sync must not mistake items added meanwhile for its own work.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
import http.client
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from clothsim.data.records import SPLITS, CatalogRecord
from clothsim.errors import ClothsimError
from clothsim.features.store import StoreBusyError, UnfinishedStoreError
from clothsim.fileio import write_bytes
from clothsim.images import PHOTO_FORMATS
from clothsim.similarity_index import SimilarityIndex
from clothsim.web.auth import ApiKey
from clothsim.web.snapshot import IndexFollower, manifest_signature, warm_snapshot

logger = logging.getLogger(__name__)

#: Writes applied in one group (one store commit for the adds, one for the deletes) at most.
MAX_GROUP = 256
#: Writes waiting for the writer thread beyond which new ones are refused as busy.
MAX_WAITING = 4096
#: Longest item_id and attribute name accepted, and most attributes per item.
MAX_TEXT_CHARS = 200
MAX_ATTRIBUTES = 64
_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


class WriteRefused(Exception):
    """A write that was not applied; ``kind`` maps to an HTTP status as :class:`~clothsim.web.service.QueryRejected`'s
    kinds do (``bad_request``, ``unknown_item``, ``too_large``, ``busy``), plus ``forbidden_source`` (422)."""

    def __init__(self, kind: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class WriteSettings:
    """What REST writes may do on this server (they are off unless a :class:`WriteSettings` is given).

    Attributes:
        key: The API key writes must present.
        upload_dir: Where uploaded and fetched photos are kept (created when needed).
        path_roots: Folders whose files a write may name by path (none: paths are refused).
        url_prefixes: URL prefixes a write may name (none: URLs are refused).
        fetch_timeout_s: Seconds to fetch a photo from a URL.
        busy_timeout_s: How long a write waits for another writer of the folder (``clothsim index``,
            another worker) before it is refused with 503.
    """

    key: ApiKey
    upload_dir: Path
    path_roots: tuple[Path, ...] = ()
    url_prefixes: tuple[str, ...] = ()
    fetch_timeout_s: float = 20.0
    busy_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "upload_dir", Path(self.upload_dir).resolve())
        object.__setattr__(self, "path_roots", tuple(Path(p).resolve() for p in self.path_roots))
        for prefix in self.url_prefixes:
            if not prefix.startswith(("http://", "https://")) or prefix.count("/") < 3:
                raise ValueError(f"a URL prefix must be http(s)://HOST/..., got {prefix!r}")


def default_upload_dir(index_root: str | Path) -> Path:
    """``<index>.uploads`` beside the index folder: outside it, so ``clothsim index --overwrite`` (which
    swaps folders) keeps the photos of items added over REST."""
    root = Path(index_root).resolve()
    return root.with_name(root.name + ".uploads")


# ----- where a photo comes from ----------------------------------------------------------------------
def read_path(value: str, roots: Sequence[Path], limit: int) -> tuple[bytes, Path]:
    """The bytes of a file a write names by path, and its resolved path.

    Raises:
        WriteRefused: the path is not absolute, not under an allowed folder (links resolved), not a
            file, or larger than ``limit``.
    """
    if not roots:
        raise WriteRefused("forbidden_source", "this server takes no file paths (start it with "
                                               "--write-path-root DIR); upload the photo instead")
    if _has_control(value):
        raise WriteRefused("bad_request", "path: holds a control character")
    path = Path(value)
    if not path.is_absolute():
        raise WriteRefused("bad_request", "path: must be an absolute path on the server")
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise WriteRefused("bad_request", "path: no such file on the server") from None
    if not any(resolved.is_relative_to(root) for root in roots):
        raise WriteRefused("forbidden_source", "path: not under a folder this server may read (--write-path-root)")
    if not resolved.is_file():
        raise WriteRefused("bad_request", "path: not a file")
    size = resolved.stat().st_size
    if size > limit:
        raise WriteRefused("too_large", f"path: the file is {size} bytes; the limit is {limit}")
    return resolved.read_bytes(), resolved


class _PrefixRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to another URL under the allowed prefixes."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        self.prefixes = tuple(prefixes)

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        if not url_under_prefix(newurl, self.prefixes):
            raise WriteRefused("forbidden_source", "url: redirected outside the prefixes this server may fetch")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def url_under_prefix(url: str, prefixes: Sequence[str]) -> bool:
    """Whether ``url`` names a resource under one of ``prefixes``, compared part by part (scheme, host and
    port, then path), never as plain strings: ``/ok/../private``, ``/ok/%2e%2e/private``, an encoded
    slash or backslash, a different host that starts with the same letters, user info, whitespace and
    control characters are all refused, since the fetching side would resolve them elsewhere."""
    if not url or any(ord(c) <= 32 or ord(c) == 127 for c in url):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return False
    lowered = parts.path.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in parts.path:
        return False
    segments = urllib.parse.unquote(parts.path).split("/")
    if any(segment in (".", "..") for segment in segments):
        return False
    for prefix in prefixes:
        allowed = urllib.parse.urlsplit(prefix)
        same_place = (allowed.scheme == parts.scheme and (allowed.hostname or "") == parts.hostname
                      and allowed.port == port)
        base = allowed.path if allowed.path.endswith("/") else allowed.path + "/"
        if same_place and (parts.path + ("/" if not parts.path.endswith("/") else "")).startswith(base):
            return True
    return False


def fetch_url(url: str, prefixes: Sequence[str], limit: int, timeout: float) -> bytes:
    """The bytes at ``url``, which must start with one of ``prefixes``.

    Raises:
        WriteRefused: not allowed, not reachable, not 200, or larger than ``limit``.
    """
    if not prefixes:
        raise WriteRefused("forbidden_source", "this server fetches no URLs (start it with --write-url-prefix); "
                                               "upload the photo instead")
    if not url_under_prefix(url, prefixes):
        raise WriteRefused("forbidden_source", "url: not under a prefix this server may fetch (--write-url-prefix)")
    opener = urllib.request.build_opener(_PrefixRedirects(prefixes))
    try:
        with opener.open(url, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise WriteRefused("too_large", f"url: the file is {declared} bytes; the limit is {limit}")
            data = response.read(limit + 1)
    except urllib.error.HTTPError as exc:
        raise WriteRefused("bad_request", f"url: the server answered {exc.code}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise WriteRefused("bad_request", f"url: could not be fetched ({type(exc).__name__})") from None
    if len(data) > limit:
        raise WriteRefused("too_large", f"url: the file is over the limit of {limit} bytes")
    return data


def image_format(data: bytes) -> str | None:
    """Pillow's name for the format of an image file's bytes (``"JPEG"``...), from its header alone."""
    try:
        with Image.open(io.BytesIO(data), formats=PHOTO_FORMATS) as img:
            return img.format
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def keep_photo(upload_dir: Path, data: bytes, fmt: str | None) -> Path:
    """Store an uploaded or fetched photo durably under its SHA-256 (the same photo is kept once)."""
    digest = hashlib.sha256(data).hexdigest()
    path = upload_dir / digest[:2] / (digest + _SUFFIXES.get(fmt or "", ".img"))
    if not (path.is_file() and path.stat().st_size == len(data)):
        write_bytes(path, data)  # beside, flushed, renamed: never a half-written photo under this name
    return path


@dataclass(frozen=True)
class ItemFields:
    """The checked fields of a new item, before its photo is read (a bad field costs no encoding)."""

    category: str | None
    split: str | None
    item_id: str | None
    attributes: tuple[str, ...]

    def record(self, path: Path) -> CatalogRecord:
        return CatalogRecord(str(path), self.category, split=self.split, item_id=self.item_id,
                             attributes=self.attributes)


def item_fields(category: str | None, split: str | None, item_id: str | None, attributes: str | None,
                needs_category: bool) -> ItemFields:
    """Check a new item's fields.

    Raises:
        WriteRefused: ``bad_request``, naming the field.
    """
    category = (category or "").strip() or None
    if category is None and needs_category:
        raise WriteRefused("bad_request", "category: required, as every item of this index has one")
    if category is not None and (len(category) > MAX_TEXT_CHARS or "/" in category or category in (".", "..")
                                 or _has_control(category)):
        raise WriteRefused("bad_request", f"category: at most {MAX_TEXT_CHARS} characters, without '/' or control "
                                          "characters, and not '.' or '..' (a category names a folder too)")
    split = (split or "").strip() or None
    if split is not None and split not in SPLITS:
        raise WriteRefused("bad_request", f"split: one of {', '.join(SPLITS)}")
    item_id = (item_id or "").strip() or None
    if item_id is not None and (len(item_id) > MAX_TEXT_CHARS or _has_control(item_id)):
        raise WriteRefused("bad_request", f"item_id: at most {MAX_TEXT_CHARS} characters, without control characters")
    names = tuple(a.strip() for a in (attributes or "").split(",") if a.strip())
    if len(names) > MAX_ATTRIBUTES or any(len(a) > MAX_TEXT_CHARS or _has_control(a) for a in names):
        raise WriteRefused("bad_request", f"attributes: at most {MAX_ATTRIBUTES} comma-separated names of at most "
                                          f"{MAX_TEXT_CHARS} characters")
    return ItemFields(category, split, item_id, names)


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


# ----- the writer ------------------------------------------------------------------------------------------
@dataclass
class _Write:
    kind: str  # "add" or "delete"
    future: Future = field(default_factory=Future)
    vector: np.ndarray | None = None
    record: CatalogRecord | None = None
    item_id: int | None = None


GroupObserver = Callable[[int, int, float], None]


class CatalogueWriter:
    """Applies the writes of one server process to its index folder, one group at a time, on one thread.

    Args:
        root: The index folder.
        encoder: The encoder the index was built with (reused for every reopening).
        follower: Where committed states are published to this process's searches.
        backend_options: Search-time backend options the server was started with.
        busy_timeout_s: How long to retry a folder that another writer holds.
        observe: Called after each group with its adds, deletes and seconds (metrics).
    """

    def __init__(self, root: str | Path, encoder: Any, follower: IndexFollower, *,
                 backend_options: dict[str, Any] | None = None, busy_timeout_s: float = 30.0,
                 observe: GroupObserver | None = None) -> None:
        self.root = Path(root)
        self.encoder = encoder
        self.follower = follower
        self.backend_options = dict(backend_options or {})
        self.busy_timeout_s = float(busy_timeout_s)
        self._observe = observe
        self._cond = threading.Condition()
        self._waiting: list[_Write] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="clothsim-writer", daemon=True)
        self._thread.start()

    def add(self, vector: np.ndarray, record: CatalogRecord) -> int:
        """Add one item; returns its id once it is committed and searchable.

        Raises:
            WriteRefused: ``busy`` (another writer held the folder too long, or too many writes wait).
            ClothsimError, OSError: the commit failed (nothing of this write was kept).
        """
        return int(self._submit(_Write("add", vector=np.asarray(vector, dtype=np.float32).reshape(1, -1),
                                       record=record)))

    def delete(self, item_id: int) -> None:
        """Delete one item; returns once the deletion is committed and no search can return it.

        Raises:
            WriteRefused: ``unknown_item`` (no such live item) or ``busy``.
        """
        self._submit(_Write("delete", item_id=int(item_id)))

    def _submit(self, write: _Write) -> Any:
        with self._cond:
            if self._closed:
                raise WriteRefused("busy", "the server is shutting down", retry_after=5)
            if len(self._waiting) >= MAX_WAITING:
                raise WriteRefused("busy", "too many writes are waiting; try again shortly", retry_after=2)
            self._waiting.append(write)
            self._cond.notify()
        return write.future.result()

    def close(self) -> None:
        """Apply what is waiting, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    # ----- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            started = time.perf_counter()
            try:
                self._apply(group)
            except BaseException as exc:  # noqa: BLE001 - every write of the group learns why it failed
                logger.error("REST writes failed: %s", exc)
                _fail(group, exc)
            if self._observe is not None:
                self._observe(sum(w.kind == "add" for w in group), sum(w.kind == "delete" for w in group),
                              time.perf_counter() - started)

    def _apply(self, group: list[_Write]) -> None:
        with self.follower.local_commit(), self._locked_index() as index:
            adds = [w for w in group if w.kind == "add"]
            deletes = self._live_deletes(index, [w for w in group if w.kind == "delete"])
            if adds:
                try:
                    ids = index.backend.add(np.concatenate([w.vector for w in adds]), [w.record for w in adds])
                except BaseException as exc:  # noqa: BLE001 - one commit: none of the adds was kept
                    _fail(adds, exc)
                    adds = []
                else:
                    for write, new_id in zip(adds, ids):
                        write.item_id = int(new_id)
            if deletes:
                try:
                    index.backend.delete([w.item_id for w in deletes])
                except BaseException as exc:  # noqa: BLE001 - one commit: none of the deletes was kept
                    _fail(deletes, exc)
                    deletes = []
            if not adds and not deletes:
                return
            try:
                index.backend.save()
                index.store.compact()  # REST adds come a few at a time: merge small segments now and then
            except (ClothsimError, OSError) as exc:
                # The store's commits stand; a backend opened behind the store catches up from it.
                logger.warning("after committing REST writes: %s", exc)
            signature = manifest_signature(self.root)
            try:
                # Warmed while the lock is held: no other writer can remove files this state maps meanwhile.
                warm_snapshot(index)
                self.follower.publish(index, signature)
            except BaseException as exc:  # noqa: BLE001 - committed, but not searchable here yet
                _fail(adds + deletes, WriteRefused("busy", f"the write was saved, but this server could not load "
                                                          f"the new state yet ({exc})", retry_after=5))
                raise
        for write in adds:
            write.future.set_result(write.item_id)
        for write in deletes:
            write.future.set_result(None)
        logger.info("committed %d adds and %d deletes over REST (generation %s)", len(adds), len(deletes),
                    index.store.manifest.get("generation"))

    @staticmethod
    def _live_deletes(index: SimilarityIndex, deletes: list[_Write]) -> list[_Write]:
        """The deletes of live items (each id once); the others are answered ``unknown_item`` now."""
        kept: dict[int, _Write] = {}
        for write in deletes:
            assert write.item_id is not None
            try:
                index.store.get(write.item_id)
            except (KeyError, OverflowError, ValueError):
                known = False
            else:
                known = write.item_id not in kept
            if known:
                kept[write.item_id] = write
            else:
                write.future.set_exception(WriteRefused("unknown_item",
                                                        f"no item with id {write.item_id} in the index"))
        return list(kept.values())

    @contextmanager
    def _locked_index(self) -> Iterator[SimilarityIndex]:
        """The index as committed now, opened afresh, with the folder's writer lock held."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            before = manifest_signature(self.root)
            try:
                index = SimilarityIndex.open(self.root, encoder=self.encoder, backend_options=self.backend_options)
            except UnfinishedStoreError:
                raise WriteRefused("busy", _SYNC_PENDING, retry_after=30) from None
            except (ClothsimError, OSError):
                if manifest_signature(self.root) == before or time.monotonic() > deadline:
                    raise
                continue  # another writer committed (and removed files) while this one was opening
            with ExitStack() as held:
                try:
                    held.enter_context(index.store.writer())
                except StoreBusyError:
                    _close(index)
                    if time.monotonic() > deadline:
                        raise WriteRefused("busy", "another process is writing the index; try again shortly",
                                           retry_after=5) from None
                    time.sleep(0.05)
                    continue
                if manifest_signature(self.root) != before:
                    _close(index)
                    continue  # committed by someone else between the open and the lock: open again
                if index.store.sync_pending is not None:
                    _close(index)
                    raise WriteRefused("busy", _SYNC_PENDING, retry_after=30)
                yield index
                return


_SYNC_PENDING = ("the index is being updated by `clothsim index` (or a run of it was interrupted and must be "
                 "finished); try again later")


def _fail(writes: list[_Write], exc: BaseException) -> None:
    for write in writes:
        if not write.future.done():
            write.future.set_exception(exc)


def _close(index: SimilarityIndex) -> None:
    close = getattr(index.backend, "close", None)  # a database backend's connection (Milvus)
    if close is not None:
        close()
