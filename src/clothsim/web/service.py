"""What the web application does with a catalogue, kept apart from HTTP so it can be tested alone.

One :class:`SearchService` is built at start-up around an open :class:`clothsim.SimilarityIndex`;
request threads share it. Thread safety and memory, decided here once:

* at start-up the index is checked in full (every checksum) and the store's lazily built caches
  (metadata, category codes, tombstones) are filled, so a damaged index never serves and request
  threads only read the caches; until then the service is not :attr:`~SearchService.ready`;
* a request searches one state of the index from start to end (a :class:`~clothsim.web.snapshot.Snapshot`);
  states committed later (a sync by ``clothsim index``, a REST write) replace it for new requests
  (:mod:`clothsim.web.snapshot`);
* the encoder runs on one thread of its own, one batch at a time (the
  :class:`~clothsim.encoders.base.Encoder` contract does not promise thread safety, and one forward pass
  already uses the encoder's threads): concurrent uploads are encoded together in batches
  (:mod:`clothsim.web.batching`);
* requests' CPU work (decoding, ranking) runs on the compute threads of :mod:`clothsim.web.compute`,
  which also limit BLAS to one thread per call: request threads never start parallel BLAS of their own;
* memory is bounded by a budget in bytes (:class:`MemoryBudget`): an upload reserves what decoding it
  will hold at most (its bytes plus :data:`DECODE_BYTES_PER_PIXEL` per pixel, known from the header
  before any pixel is decoded) from reading it until it is decoded and transformed to the encoder's input
  (a few hundred KiB, which waits for its batch inside :data:`HEADROOM_BYTES`); when the budget is taken,
  a request waits up to ``queue_timeout_s`` and is then refused with 503 and ``Retry-After``;
* full-size decodes are also bounded in number (``decode_slots``); decoding and the top-k scan run in
  parallel (Pillow and numpy release the GIL).

Error messages echo at most a short prefix of what the client sent.
"""

from __future__ import annotations

import ctypes
import io
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from clothsim.data.records import CatalogRecord
from clothsim.errors import ClothsimError, UsageError
from clothsim.duplicates.collapse import collapsed_search, copies_of_vectors
from clothsim.duplicates.finder import recorded_threshold
from clothsim.features.model_files import recorded_spec
from clothsim.features.store import StoreIntegrityError
from clothsim.images import PHOTO_FORMATS, ImageDecodeError, load_image
from clothsim.index.base import SearchHit
from clothsim.defaults import (
    DEFAULT_BATCH_WAIT_S,
    DEFAULT_DECODE_SLOTS,
    DEFAULT_FOLLOW_S,
    DEFAULT_MAX_BATCH,
    DEFAULT_QUEUE_TIMEOUT_S,
)
from clothsim.encoders.base import collate
from clothsim.similarity_index import SimilarityIndex, mix_query
from clothsim.web.batching import EncodeBatcher
from clothsim.web.compute import ComputeThreads, ThreadPlan, own_encoder_threads, plan_threads
from clothsim.web.snapshot import IndexFollower, Snapshot, warm_snapshot
from clothsim.web.writes import CatalogueWriter, WriteSettings

logger = logging.getLogger(__name__)

#: Bytes a full-size decode holds per pixel at its peak (the RGB image, its upright copy and Pillow's
#: working memory), with a margin; the figure is in docs/benchmarks.md.
DECODE_BYTES_PER_PIXEL = 10
#: Memory kept out of the request budget for everything else a request allocates (JSON, threads, photos
#: transformed and waiting for their batch: 0.6 MiB each at 224x224, one per open connection at most).
HEADROOM_BYTES = 96 * 1024 * 1024
#: Characters of client input an error message may quote.
ECHO_CHARS = 40
#: Longest text query; a text tower reads a few dozen words at most.
MAX_TEXT_CHARS = 1000


def short(text: object, limit: int = ECHO_CHARS) -> str:
    """``text`` as ``repr``, cut to ``limit`` characters with its full length said when it was longer."""
    value = str(text)
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_freed_memory_to_the_os() -> bool:
    """Make glibc map every allocation over 1 MiB on its own, so a freed image goes back to the system.

    By default glibc raises its mmap threshold to the size of the largest block freed (up to 32 MiB), after
    which a decoded photo's blocks come from per-thread heap arenas and stay resident once freed: a budget
    that admits one 64-megapixel decode at a time then still grows by one image per request thread (the
    figure is in docs/benchmarks.md). A fixed threshold also turns the adjustment off.
    Returns whether the setting took (glibc only; elsewhere nothing changes).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20))
    except (OSError, AttributeError):
        return False


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class ServiceObserver:
    """What the service reports as it works (the metrics implement it); each method does nothing here."""

    def observe_batch(self, size: int, seconds: float) -> None:
        """An encoder batch of ``size`` photos took ``seconds``."""

    def observe_writes(self, adds: int, deletes: int, seconds: float) -> None:
        """A group of REST writes was committed and published in ``seconds``."""

    def observe_snapshot(self, snapshot: Snapshot, reload: bool = True) -> None:
        """Requests now search ``snapshot`` (``reload``: it replaced another)."""

    def observe_ready(self, snapshot: Snapshot) -> None:
        """The warm-up is done; requests search ``snapshot``."""

    def observe_budget(self, used: int, capacity: int) -> None:
        """The memory budget holds ``used`` of ``capacity`` bytes."""


class QueryRejected(ClothsimError, ValueError):
    """A query the service will not run; ``kind`` says why, ``message`` is fit to show a user.

    Kinds: ``"too_large"`` (bytes or pixels over a limit), ``"not_image"`` (undecodable),
    ``"unknown_item"`` (no such id), ``"bad_request"`` (anything else about the arguments),
    ``"busy"`` (the memory budget is taken; ``retry_after`` says in how many seconds to try again).
    """

    def __init__(self, kind: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class DecodedUpload:
    """An uploaded photo decoded to RGB, with what the response reports about it."""

    image: Image.Image
    width: int
    height: int
    size_bytes: int


@dataclass(frozen=True)
class UploadResult:
    """What :meth:`SearchService.search_upload` found, with what the response reports about the upload."""

    width: int
    height: int
    size_bytes: int
    hits: list[SearchHit]


class MemoryBudget:
    """A byte budget shared by request threads: :meth:`hold` reserves, waits, or refuses.

    Args:
        capacity: Bytes that requests may hold together.
        on_change: Called with the bytes held and the capacity after every change (metrics).
    """

    def __init__(self, capacity: int, on_change: Callable[[int, int], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 byte, got {capacity}")
        self.capacity = int(capacity)
        self.used = 0
        self.peak = 0
        self._on_change = on_change
        self._cond = threading.Condition()
        if on_change is not None:
            on_change(0, self.capacity)

    @contextmanager
    def hold(self, nbytes: int, timeout: float) -> Iterator[None]:
        """Reserve ``nbytes`` for the ``with`` block, waiting up to ``timeout`` seconds.

        Raises:
            QueryRejected: ``too_large`` if ``nbytes`` exceeds the whole budget, ``busy`` if it did not
                free up in time.
        """
        nbytes = int(nbytes)
        if nbytes > self.capacity:
            raise QueryRejected("too_large", f"decoding this image needs about {nbytes / 2**20:.0f} MiB, more than "
                                             f"this server's request memory budget of {self.capacity / 2**20:.0f} MiB")
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.used + nbytes > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QueryRejected("busy", "the server is busy decoding other large uploads; try again shortly",
                                        retry_after=max(1, int(round(timeout))))
                self._cond.wait(left)
            self.used += nbytes
            self.peak = max(self.peak, self.used)
            self._changed()
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._changed()
                self._cond.notify_all()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.used, self.capacity)


class SearchService:
    """Similarity search over one catalogue, safe to call from many request threads.

    Args:
        index: An open index; the service searches it, and the states it is synced or written to later
            (:mod:`clothsim.web.snapshot`).
        max_upload_bytes: Largest accepted upload, in bytes.
        max_pixels: Largest accepted image, in pixels (width x height), checked before decoding.
        max_k: Largest number of results one query may ask for.
        decode_slots: How many uploads may be decoded at full size at the same time.
        memory_budget_bytes: The most the whole process should hold (resident). Requests get what is
            left after start-up, less :data:`HEADROOM_BYTES`. ``None``: uploads are bounded by
            ``decode_slots`` full-size decodes only.
        queue_timeout_s: How long a request waits for memory before it is refused with ``busy``.
        verify_index: Check every checksum of the index at start-up and refuse to serve a damaged one.
        threads: How the process's cores are used (default: :func:`~clothsim.web.compute.plan_threads`).
        max_batch: Most uploads encoded together.
        batch_wait_s: How long a batch waits for uploads being decoded after its first one is ready.
        observer: Told what the service does (batches, writes, index states, memory): the metrics.
        backend_options: Search-time backend options the index was opened with (kept when it is
            opened again after a change).
        follow_s: Seconds between looks at the index folder for changes committed elsewhere (``0``: never).
        warm_in_background: Verify now, but leave the rest of the warm-up to :meth:`start`, which runs it
            in a thread; until it is done :attr:`ready` is false and searches are refused as ``busy``.
        writes: What REST writes may do (:mod:`clothsim.web.writes`); ``None``: no writes.

    Raises:
        StoreIntegrityError: ``verify_index`` and the index is damaged (the message names the file).
        ValueError: a limit below one, or a memory budget that start-up alone already uses.
    """

    def __init__(
        self,
        index: SimilarityIndex,
        *,
        max_upload_bytes: int,
        max_pixels: int,
        max_k: int,
        decode_slots: int = DEFAULT_DECODE_SLOTS,
        memory_budget_bytes: int | None = None,
        queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
        verify_index: bool = True,
        threads: ThreadPlan | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
        observer: ServiceObserver | None = None,
        backend_options: dict[str, Any] | None = None,
        follow_s: float = DEFAULT_FOLLOW_S,
        warm_in_background: bool = False,
        writes: WriteSettings | None = None,
    ) -> None:
        for name, value in (("max_upload_bytes", max_upload_bytes), ("max_pixels", max_pixels),
                            ("max_k", max_k), ("decode_slots", decode_slots)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if queue_timeout_s < 0:
            raise ValueError(f"queue_timeout_s must not be negative, got {queue_timeout_s}")
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.max_k = max_k
        self.queue_timeout_s = float(queue_timeout_s)
        self.memory_budget_bytes = memory_budget_bytes
        self.encoder = index.encoder
        #: Whether the index's encoder has a text tower, so searches by text are answered (as recorded in
        #: the index folder: reading it builds nothing).
        self.text_search = recorded_spec(index.store).has_text_tower
        self.root = Path(index.store.root)
        self.backend_options = dict(backend_options or {})
        self.follow_s = float(follow_s)
        self.startup_error: BaseException | None = None
        #: Called (once) when a background warm-up fails, e.g. to stop the server rather than let it answer
        #: 503 forever.
        self.on_startup_failure: Callable[[], None] | None = None
        self.observer = observer or ServiceObserver()
        self._first_index = index
        self._decode_slots = threading.BoundedSemaphore(decode_slots)
        self._decode_slot_count = decode_slots
        self._ready = threading.Event()
        self._text_lock = threading.Lock()
        #: Damage found while answering from the state being served (see :meth:`mark_damaged`).
        self.damage: BaseException | None = None
        self.follower: IndexFollower | None = None
        self.write_settings = writes
        self.writer: CatalogueWriter | None = None
        self.budget = MemoryBudget(1)  # replaced by the warm-up, measured once the index is loaded
        if not return_freed_memory_to_the_os():
            logger.info("not glibc: freed image memory may stay resident; the memory budget is approximate")
        if verify_index:
            verify_store(index.store)
        plan = threads or plan_threads()
        own_encoder_threads(self.encoder, plan.encoder_threads)
        # The index's libraries (FAISS's OpenMP among them) are loaded by now: their threads are limited.
        self.compute = ComputeThreads(plan)
        encoder = self.encoder
        self.batcher = EncodeBatcher(lambda items: encoder.embed(collate(items)), max_batch=max_batch,
                                     max_wait_s=batch_wait_s, observe=self.observer.observe_batch)
        self._warm_thread: threading.Thread | None = None
        self._warm_in_background = warm_in_background
        if not warm_in_background:
            self.warm_up()

    # ----- start-up and shut-down -----------------------------------------------------------
    def start(self) -> None:
        """Start following the index folder, and the warm-up if it was left for the background."""
        if self._warm_in_background and self._warm_thread is None:
            self._warm_thread = threading.Thread(target=self._warm_up_logged, name="clothsim-warm-up", daemon=True)
            self._warm_thread.start()
        elif self.follower is not None:
            self.follower.start()

    def _warm_up_logged(self) -> None:
        try:
            self.warm_up()
        except BaseException as exc:  # noqa: BLE001 - kept for whoever started the server, and logged
            self.startup_error = exc
            logger.error("the warm-up failed; the server will not become ready: %s", exc)
            if self.on_startup_failure is not None:
                self.on_startup_failure()
            return
        if self.follower is not None:
            self.follower.start()

    def warm_up(self) -> None:
        """Fill every lazy cache, map the index's files and run the encoder once, so requests never race
        to build them; then measure the memory budget and become ready."""
        started = time.perf_counter()
        index = self._first_index
        warm_snapshot(index)
        # Before any batch: the first run allocates the runtime's buffers.
        self.encoder.encode_images([Image.new("RGB", (64, 64), (128, 128, 128))])
        self.budget = self._make_budget(self.memory_budget_bytes, self.max_pixels, self.max_upload_bytes,
                                        self._decode_slot_count, self.observer.observe_budget)
        self.follower = IndexFollower(index, backend_options=self.backend_options, poll_s=self.follow_s,
                                      on_swap=self._swapped)
        self._first_index = None  # the follower holds it from now on
        if self.write_settings is not None:
            self.writer = CatalogueWriter(self.root, self.encoder, self.follower, backend_options=self.backend_options,
                                          busy_timeout_s=self.write_settings.busy_timeout_s,
                                          observe=self.observer.observe_writes)
        self._ready.set()
        self.observer.observe_ready(self.follower.current)
        logger.info("search service ready: %d items, %d categories, encoder %s (%.1f s)", len(index),
                    len(self.follower.current.categories), self.encoder.name, time.perf_counter() - started)

    @property
    def ready(self) -> bool:
        """Whether the index is open and warmed (searches are answered), and no damage was found in the
        state being served."""
        return self._ready.is_set() and self.damage is None

    def mark_damaged(self, error: BaseException) -> None:
        """Damage was found in the state being served (a row that fails its checksum): searches that reach
        it are refused, and the server reports not ready until a repaired state replaces it."""
        if self.damage is None:
            logger.error("the index is damaged; not ready until it is repaired: %s", error)
        self.damage = error

    def _swapped(self, snapshot: Snapshot, reload: bool = True) -> None:
        self.damage = None  # a new state of the folder, checked as it was opened
        self.observer.observe_snapshot(snapshot, reload)

    def close(self) -> None:
        """Stop following the folder and stop the encoder and compute threads (the application calls it
        when it shuts down, after the requests in flight)."""
        if self.writer is not None:
            self.writer.close()
        if self.follower is not None:
            self.follower.close()
        self.batcher.close()
        self.compute.close()

    def _make_budget(self, total: int | None, max_pixels: int, max_upload: int, slots: int,
                     on_change: Callable[[int, int], None] | None = None) -> MemoryBudget:
        if total is None:
            return MemoryBudget(slots * (max_upload + max_pixels * DECODE_BYTES_PER_PIXEL), on_change)
        at_rest = resident_bytes() or 0
        capacity = int(total) - at_rest - HEADROOM_BYTES
        if capacity < 64 * 1024 * 1024:
            raise ValueError(f"a memory budget of {total / 2**20:.0f} MiB leaves too little for requests: the index "
                             f"and encoder already use {at_rest / 2**20:.0f} MiB, and {HEADROOM_BYTES / 2**20:.0f} MiB "
                             "is kept aside; give at least "
                             f"{(at_rest + HEADROOM_BYTES + 64 * 2**20) / 2**20:.0f} MiB")
        logger.info("memory budget %.0f MiB: %.0f MiB at rest, %.0f MiB for requests", total / 2**20,
                    at_rest / 2**20, capacity / 2**20)
        return MemoryBudget(capacity, on_change)

    # ----- the index requests search ---------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """The index state one request searches from start to end (see :class:`IndexFollower.use`).

        Raises:
            QueryRejected: ``busy`` while the service is still warming up.
        """
        self.require_ready()
        if self.follow_s > 0:
            self.follower.check()
        with self.follower.use() as snapshot:
            yield snapshot

    def require_ready(self) -> None:
        """Raise ``QueryRejected('busy')`` (503 with ``Retry-After``) until the warm-up is done."""
        if not self._ready.is_set():  # set last, once the follower and the writer exist
            raise QueryRejected("busy", "the server is still loading its index; try again shortly", retry_after=2)

    @property
    def index(self) -> SimilarityIndex:
        """The index new requests search."""
        if self.follower is None:
            assert self._first_index is not None
            return self._first_index
        return self.follower.current.index

    def categories(self) -> dict[str, int]:
        """Live item count per category, of the state new requests search."""
        if self.follower is None:
            return {}
        self._follow()
        return dict(self.follower.current.categories)

    def _follow(self) -> None:
        """Switch to the folder's newest committed state first, as searches do (a write another worker
        process acknowledged is then counted too)."""
        if self.follower is not None and self.follow_s > 0 and self._ready.is_set():
            self.follower.check()

    def __len__(self) -> int:
        self._follow()
        return len(self.index)

    def item_path(self, item_id: int) -> Path:
        """The image file of a catalogue item, looked up in the store (never taken from a request).

        Raises:
            QueryRejected: ``unknown_item`` when the id is not in the index or its file is gone.
        """
        with self.snapshot() as snapshot:
            record = self._record(snapshot, item_id)
        path = Path(record.path)
        if not path.is_file():
            raise QueryRejected("unknown_item", f"the image of item {item_id} is no longer on disk")
        return path

    def item_category(self, item_id: int) -> str | None:
        """The category of a catalogue item; ``QueryRejected('unknown_item')`` if there is none."""
        with self.snapshot() as snapshot:
            return self._record(snapshot, item_id).category

    @staticmethod
    def _record(snapshot: Snapshot, item_id: int) -> CatalogRecord:
        try:
            return snapshot.index.store.get(item_id).record
        except (KeyError, OverflowError, ValueError):
            raise QueryRejected("unknown_item", f"no item with id {short(item_id)} in the index") from None

    # ----- queries ------------------------------------------------------------------------
    def check_query(self, k: int, category: str | None, snapshot: Snapshot | None = None) -> None:
        """Refuse ``k`` outside 1..max_k and categories the index does not have."""
        if not 1 <= k <= self.max_k:
            raise QueryRejected("bad_request", f"k must be between 1 and {self.max_k}, got {short(k)}")
        if category is None:
            return
        known_categories = snapshot.categories if snapshot is not None else self.categories()
        if category not in known_categories:
            known = sorted(known_categories)
            shown = ", ".join(repr(c) for c in known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
            raise QueryRejected("bad_request", f"unknown category {short(category)}; the index has {shown}")

    def decode_upload(self, data: bytes) -> DecodedUpload:
        """Turn uploaded bytes into an RGB image, refusing oversized and undecodable files.

        Raises:
            QueryRejected: ``too_large`` for too many bytes or pixels, ``not_image`` otherwise.
        """
        if len(data) > self.max_upload_bytes:
            raise QueryRejected("too_large", f"the file is {len(data)} bytes; the limit is {self.max_upload_bytes}")
        if not data:
            raise QueryRejected("not_image", "the file is empty")
        width, height = self.probe(io.BytesIO(data))
        with self._decode_slots:
            try:
                # Reduced while decoding where that is exact for the encoder, as SimilarityIndex.search does.
                image = load_image(data, max_pixels=self.max_pixels, min_side=self.encoder.decode_min_side)
            except ImageDecodeError as exc:
                raise QueryRejected("not_image", f"the file is not an image this server can read "
                                                f"({exc.reason[:200]})") from exc
        return DecodedUpload(image, width, height, len(data))

    def probe(self, stream: BinaryIO) -> tuple[int, int]:
        """Width and height from the header alone (a decompression bomb is measured, not expanded);
        refuses images over the pixel limit. The stream is left where it was."""
        position = stream.tell()
        try:
            width, height = self._probe_size(stream)
        finally:
            stream.seek(position)
        if width * height > self.max_pixels:
            raise QueryRejected("too_large", f"the image is {width}x{height} = {width * height} pixels; "
                                             f"the limit is {self.max_pixels}")
        return width, height

    @staticmethod
    def _probe_size(stream: BinaryIO) -> tuple[int, int]:
        # No warnings.catch_warnings(): it swaps process-wide state and request threads would race on it;
        # Pillow's bomb warning is caught in case the application's warning filters made it an error.
        try:
            with Image.open(stream, formats=PHOTO_FORMATS) as img:
                return img.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise QueryRejected("too_large", f"the image has too many pixels ({str(exc)[:200]})") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise QueryRejected("not_image", "the file is not an image this server can read "
                                             f"({type(exc).__name__})") from exc

    def embed_upload(self, stream: BinaryIO, size_bytes: int) -> tuple[np.ndarray, int, int]:
        """Probe, admit (memory budget), read, decode and encode (in a batch) one uploaded file; returns
        its ``(1, dim)`` vector, width and height.

        Raises:
            QueryRejected: ``too_large``, ``not_image`` or ``busy`` (with ``retry_after``).
        """
        self.require_ready()  # the memory budget is measured by the warm-up
        if size_bytes > self.max_upload_bytes:
            raise QueryRejected("too_large", f"the file is {size_bytes} bytes; the limit is {self.max_upload_bytes}")
        if size_bytes == 0:
            raise QueryRejected("not_image", "the file is empty")
        width, height = self.probe(stream)
        cost = size_bytes + width * height * DECODE_BYTES_PER_PIXEL
        with self.budget.hold(cost, self.queue_timeout_s):
            data = stream.read(self.max_upload_bytes + 1)
            ticket = self.batcher.announce()
            try:
                item = self.compute.run(self._prepare, data)
            except BaseException:
                ticket.withdraw()  # no batch waits for a photo that will not come
                raise
            del data
        # The full-size image is gone: only the encoder's input waits for its batch (inside HEADROOM_BYTES).
        return ticket.encode(item), width, height

    def search_upload(self, stream: BinaryIO, size_bytes: int, k: int, category: str | None,
                      text: str | None = None, text_weight: float = 0.5, collapse: bool = False) -> UploadResult:
        """Probe, admit (memory budget), read, decode, encode (in a batch) and search one uploaded file,
        mixed with ``text`` where one is given (see :meth:`search_text`).

        Raises:
            QueryRejected: ``too_large``, ``not_image``, ``busy`` (with ``retry_after``) or ``bad_request``.
        """
        self.check_query(k, category)
        if text is not None:
            self._check_text(text, text_weight)
        vector, width, height = self.embed_upload(stream, size_bytes)
        with self.snapshot() as snapshot:
            self.check_query(k, category, snapshot)
            if text is not None:
                vector = mix_query(vector, self._text_vector(snapshot, text), text_weight)
            hits = self._rank(snapshot, vector, k, category, collapse)
        return UploadResult(width, height, size_bytes, hits)

    def _prepare(self, data: bytes) -> Any:
        """Decode an upload and transform it to the encoder's input (on a compute thread)."""
        upload = self.decode_upload(data)
        return self.encoder.transform(upload.image)

    def _rank(self, snapshot: Snapshot, vector: np.ndarray, k: int, category: str | None,
              collapse: bool) -> list[SearchHit]:
        """The ``k`` best items for one query vector; with ``collapse``, one per group of near-duplicates."""
        if collapse:
            return self.compute.run(collapsed_search, snapshot.index, vector[0], k, category)
        return self.compute.run(snapshot.index.backend.search, vector, k, category=category)[0]

    def copies_of_upload(self, stream: BinaryIO, size_bytes: int, limit: int) -> tuple[list[SearchHit], float]:
        """The catalogue items an uploaded photo is a near-duplicate of (at most ``limit``, best first), and
        the threshold used (the one calibrated for the index, else the default)."""
        vector, _, _ = self.embed_upload(stream, size_bytes)
        with self.snapshot() as snapshot:
            threshold, _ = recorded_threshold(snapshot.index.store)
            copies = self.compute.run(copies_of_vectors, snapshot.index, vector, threshold, limit)[0]
        return copies, threshold

    def search_image(self, image: Image.Image, k: int, category: str | None) -> list[SearchHit]:
        """The ``k`` items most similar to a decoded image."""
        self.check_query(k, category)
        item = self.compute.run(self.encoder.transform, image.convert("RGB"))
        vector = self.batcher.encode(item)
        with self.snapshot() as snapshot:
            self.check_query(k, category, snapshot)
            return self.compute.run(snapshot.index.backend.search, vector, k, category=category)[0]

    def search_text(self, text: str, k: int, category: str | None, collapse: bool = False) -> list[SearchHit]:
        """The ``k`` items closest to ``text`` (the index's text tower, on ONNX Runtime).

        Raises:
            QueryRejected: ``bad_request`` for an empty or over-long text, or an index whose encoder has
                no text tower (the message says which encoders have one).
        """
        self.check_query(k, category)
        self._check_text(text)
        with self.snapshot() as snapshot:
            self.check_query(k, category, snapshot)
            vector = self._text_vector(snapshot, text)
            return self._rank(snapshot, vector, k, category, collapse)

    @staticmethod
    def _check_text(text: str, text_weight: float = 0.5) -> None:
        if not text.strip():
            raise QueryRejected("bad_request", "the text is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise QueryRejected("bad_request", f"the text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        if not 0.0 <= float(text_weight) <= 1.0:
            raise QueryRejected("bad_request", f"text_weight must lie between 0 and 1, got {text_weight}")

    def _text_vector(self, snapshot: Snapshot, text: str) -> np.ndarray:
        """The ``(1, dim)`` vector of ``text`` by the snapshot's text tower (one text tower run at a time:
        it has the encoder's share of the cores)."""
        if not self.text_search:  # said without the server's folders, which stay out of public answers
            from clothsim.runtimes.onnx_text import text_refusal

            raise QueryRejected("bad_request", text_refusal(recorded_spec(snapshot.index.store), "this index"))
        try:
            with self._text_lock:
                return snapshot.index.embed_text([text])
        except UsageError as exc:
            logger.warning("text search failed: %s", exc)
            raise QueryRejected("bad_request", "this index's text tower cannot be used; its operator has been "
                                               "told why") from None

    def search_item(self, item_id: int, k: int, category: str | None,
                    collapse: bool = False) -> tuple[list[SearchHit], CatalogRecord]:
        """The ``k`` items most similar to catalogue item ``item_id`` (the item itself left out), and the
        item's record, both from one state of the index."""
        with self.snapshot() as snapshot:
            self.check_query(k, category, snapshot)
            record = self._record(snapshot, item_id)  # 404 before any work
            hits = self.compute.run(snapshot.index.search_by_id, item_id, k, category=category, collapse=collapse)
        return hits, record


def verify_store(store: Any) -> None:
    """Check every checksum of ``store``; raise on the first problem (the message names the file)."""
    report = store.verify(full=True)
    if report.problems:
        first = report.problems[0]
        more = f" ({len(report.problems) - 1} more: `clothsim verify {store.root}`)" \
            if len(report.problems) > 1 else ""
        raise StoreIntegrityError(first.path, first.message + more, store.root, repairable=first.kind != "manifest")
