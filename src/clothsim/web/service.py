"""What the web application does with a catalogue, kept apart from HTTP so it can be tested alone.

One :class:`SearchService` is built at start-up around an open :class:`clothsim.SimilarityIndex`;
request threads share it. Thread safety, decided here once:

* the store's lazily built caches (items, id map, tombstones, categories) are filled in
  :meth:`SearchService.warm_up` before the first request, so request threads only read them;
* the encoder runs one batch at a time under a lock: the :class:`~clothsim.encoders.base.Encoder`
  contract does not promise thread safety, and on a CPU one torch forward pass already uses every core;
* full-size decodes are bounded by a semaphore so a burst of large uploads cannot exhaust memory;
  decoding and the top-k scan themselves run in parallel (Pillow and numpy release the GIL).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from clothsim.similarity_index import SimilarityIndex
from clothsim.errors import ClothsimError
from clothsim.images import ImageDecodeError, load_image
from clothsim.index.base import SearchHit

logger = logging.getLogger(__name__)


class QueryRejected(ClothsimError, ValueError):
    """A query the service will not run; ``kind`` says why, ``message`` is fit to show a user.

    Kinds: ``"too_large"`` (bytes or pixels over a limit), ``"not_image"`` (undecodable),
    ``"unknown_item"`` (no such id), ``"bad_request"`` (anything else about the arguments).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class DecodedUpload:
    """An uploaded photo decoded to RGB, with what the response reports about it."""

    image: Image.Image
    width: int
    height: int
    size_bytes: int


class SearchService:
    """Similarity search over one catalogue, safe to call from many request threads.

    Args:
        index: An open index; it is not modified.
        max_upload_bytes: Largest accepted upload, in bytes.
        max_pixels: Largest accepted image, in pixels (width x height), checked before decoding.
        max_k: Largest number of results one query may ask for.
        decode_slots: How many uploads may be decoded at full size at the same time.
    """

    def __init__(
        self,
        index: SimilarityIndex,
        *,
        max_upload_bytes: int,
        max_pixels: int,
        max_k: int,
        decode_slots: int = 4,
    ) -> None:
        for name, value in (("max_upload_bytes", max_upload_bytes), ("max_pixels", max_pixels),
                            ("max_k", max_k), ("decode_slots", decode_slots)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.index = index
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.max_k = max_k
        self._encoder_lock = threading.Lock()
        self._decode_slots = threading.BoundedSemaphore(decode_slots)
        self._categories: dict[str, int] = {}
        self.warm_up()

    # ----- start-up -----------------------------------------------------------------------
    def warm_up(self) -> None:
        """Fill every lazy cache and run the encoder once, so requests never race to build them."""
        started = time.perf_counter()
        store = self.index.store
        items = store.items()
        store.deleted_ids  # noqa: B018 - a cached property read for its side effect
        if items:
            try:
                store.get(items[0].id)  # builds the id -> item map
            except KeyError:
                pass  # the first item was deleted; the map is built all the same
        self._categories = self.index.categories()
        with self._encoder_lock:
            self.index.encoder.encode_images([Image.new("RGB", (64, 64), (128, 128, 128))])
        logger.info("search service ready: %d items, %d categories, encoder %s (%.1f s)",
                    len(self.index), len(self._categories), self.index.encoder.name,
                    time.perf_counter() - started)

    # ----- read-only facts ------------------------------------------------------------------
    def categories(self) -> dict[str, int]:
        """Live item count per category (computed once at start-up)."""
        return dict(self._categories)

    def __len__(self) -> int:
        return len(self.index)

    def item_path(self, item_id: int) -> Path:
        """The image file of a catalogue item, looked up in the store (never taken from a request).

        Raises:
            QueryRejected: ``unknown_item`` when the id is not in the index or its file is gone.
        """
        record = self._record(item_id)
        path = Path(record.path)
        if not path.is_file():
            raise QueryRejected("unknown_item", f"the image of item {item_id} is no longer on disk")
        return path

    def item_category(self, item_id: int) -> str:
        """The category of a catalogue item; ``QueryRejected('unknown_item')`` if there is none."""
        return self._record(item_id).category

    def _record(self, item_id: int):
        try:
            return self.index.store.get(item_id).record
        except KeyError:
            raise QueryRejected("unknown_item", f"no item with id {item_id} in the index") from None

    # ----- queries ------------------------------------------------------------------------
    def check_query(self, k: int, category: str | None) -> None:
        """Refuse ``k`` outside 1..max_k and categories the index does not have."""
        if not 1 <= k <= self.max_k:
            raise QueryRejected("bad_request", f"k must be between 1 and {self.max_k}, got {k}")
        if category is not None and category not in self._categories:
            raise QueryRejected("bad_request",
                                f"unknown category {category!r}; the index has {sorted(self._categories)}")

    def decode_upload(self, data: bytes) -> DecodedUpload:
        """Turn uploaded bytes into an RGB image, refusing oversized and undecodable files.

        Raises:
            QueryRejected: ``too_large`` for too many bytes or pixels, ``not_image`` otherwise.
        """
        if len(data) > self.max_upload_bytes:
            raise QueryRejected("too_large", f"the file is {len(data)} bytes; the limit is {self.max_upload_bytes}")
        if not data:
            raise QueryRejected("not_image", "the file is empty")
        width, height = self._probe_size(data)
        if width * height > self.max_pixels:
            raise QueryRejected("too_large", f"the image is {width}x{height} = {width * height} pixels; "
                                             f"the limit is {self.max_pixels}")
        with self._decode_slots:
            try:
                image = load_image(data, max_pixels=self.max_pixels)
            except ImageDecodeError as exc:
                raise QueryRejected("not_image", f"the file is not an image this server can read "
                                                f"({exc.reason})") from exc
        return DecodedUpload(image, width, height, len(data))

    @staticmethod
    def _probe_size(data: bytes) -> tuple[int, int]:
        # Only the header is read here, so a decompression bomb is measured, not expanded. No
        # warnings.catch_warnings(): it swaps process-wide state and request threads would race on it;
        # Pillow's bomb warning is caught in case the application's warning filters made it an error.
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise QueryRejected("too_large", f"the image has too many pixels ({exc})") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise QueryRejected("not_image", "the file is not an image this server can read "
                                             f"({type(exc).__name__})") from exc

    def search_image(self, image: Image.Image, k: int, category: str | None) -> list[SearchHit]:
        """The ``k`` items most similar to a decoded image."""
        self.check_query(k, category)
        with self._encoder_lock:
            vector = self.index.encoder.encode_images([image])
        return self.index.backend.search(vector, k, category=category)[0]

    def search_item(self, item_id: int, k: int, category: str | None) -> list[SearchHit]:
        """The ``k`` items most similar to catalogue item ``item_id``, the item itself left out."""
        self.check_query(k, category)
        self._record(item_id)  # 404 before any work
        return self.index.search_by_id(item_id, k, category=category)
