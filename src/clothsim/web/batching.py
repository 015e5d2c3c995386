"""Concurrent uploads encoded together: a queue that forms batches, one thread that runs the encoder.

A network encodes a batch of 32 photos several times faster per photo than 32 photos one at a time (the
measured figures are in docs/benchmarks.md), so the server encodes what arrives together in one batch,
as Triton's dynamic batcher does:

* a request announces its photo (:meth:`EncodeBatcher.announce`) when it starts decoding it, and hands
  over the decoded, transformed photo (:meth:`Ticket.encode`), then waits for its vector;
* one thread takes the first photo waiting and, while more are announced, waits for them up to
  ``max_wait_s`` after the first arrived, or until ``max_batch`` are in, whichever comes first; with
  nothing announced it starts at once, so a lone request never waits for company that is not coming;
* the encoder runs one batch at a time, on its own threads (its runtime's intra-op pool).

Only decoded photos join a batch: an upload still arriving (a slow client) or one that fails to decode
never holds up the others. If a batch fails as a whole, each of its photos is encoded again alone, so
the failure reaches only the request whose photo caused it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Sequence

import numpy as np

from clothsim.defaults import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH

logger = logging.getLogger(__name__)


BatchObserver = Callable[[int, float], None]


class BatcherClosed(RuntimeError):
    """The batcher was closed (the server is shutting down) before this photo was encoded."""


class Ticket:
    """An announced photo's place in the queue (see :meth:`EncodeBatcher.announce`)."""

    def __init__(self, batcher: "EncodeBatcher") -> None:
        self._batcher = batcher
        self._open = True

    def encode(self, item: Any, timeout: float | None = None) -> np.ndarray:
        """Hand the transformed photo over and wait for its ``(1, dim)`` vector (as
        :meth:`EncodeBatcher.encode`)."""
        if not self._open:
            raise RuntimeError("this ticket was used already")
        self._open = False
        return self._batcher._submit(item, announced=True).result(timeout)

    def withdraw(self) -> None:
        """The photo will not come (it could not be decoded); a no-op once handed over or withdrawn."""
        if self._open:
            self._open = False
            self._batcher._withdraw()


class EncodeBatcher:
    """Encodes photos handed over by many threads in batches, on one thread of its own.

    Args:
        encode_batch: Takes a list of transformed photos, returns their ``(n, dim)`` vectors, row ``i`` for
            photo ``i`` (e.g. ``lambda items: encoder.embed(collate(items))``).
        max_batch: Most photos in one batch.
        max_wait_s: How long a batch waits for announced photos after its first one arrived.
        observe: Called after each batch with its size and its encoding time in seconds (metrics).
    """

    def __init__(self, encode_batch: Callable[[Sequence[Any]], np.ndarray], *, max_batch: int = DEFAULT_MAX_BATCH,
                 max_wait_s: float = DEFAULT_BATCH_WAIT_S, observe: BatchObserver | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        self._encode_batch = encode_batch
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self._observe = observe
        self._cond = threading.Condition()
        self._waiting: deque[tuple[Any, Future]] = deque()
        self._announced = 0  # photos announced and not handed over yet
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="clothsim-encoder", daemon=True)
        self._thread.start()

    # ----- what request threads call ---------------------------------------------------------
    def announce(self) -> "Ticket":
        """Say that a photo is on its way (being decoded), so a batch forming now waits for it (up to
        ``max_wait_s``). Hand the photo over with :meth:`Ticket.encode`, or :meth:`Ticket.withdraw` the
        announcement when decoding fails."""
        with self._cond:
            self._announced += 1
        return Ticket(self)

    def _withdraw(self) -> None:
        with self._cond:
            self._announced -= 1
            self._cond.notify_all()

    def encode(self, item: Any, timeout: float | None = None) -> np.ndarray:
        """The ``(1, dim)`` vector of one transformed photo, encoded with whatever else is waiting.

        Raises:
            BatcherClosed: the batcher closed before the photo was encoded.
            TimeoutError: no vector within ``timeout`` seconds.
            Exception: what encoding this photo raised.
        """
        return self._submit(item, announced=False).result(timeout)

    def _submit(self, item: Any, announced: bool) -> Future:
        future: Future = Future()
        with self._cond:
            if announced:
                self._announced -= 1
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            self._waiting.append((item, future))
            self._cond.notify_all()
        return future

    def close(self) -> None:
        """Encode what is waiting, then stop the thread; later :meth:`encode` calls raise."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    # ----- the encoder thread --------------------------------------------------------------
    def _next_batch(self) -> list[tuple[Any, Future]] | None:
        with self._cond:
            while not self._waiting:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.max_wait_s
            while len(self._waiting) < self.max_batch and self._announced > 0 and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            count = min(self.max_batch, len(self._waiting))
            return [self._waiting.popleft() for _ in range(count)]

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = time.perf_counter()
            try:
                vectors = self._encode_batch([item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - isolated below: each photo alone gets its own outcome
                if len(batch) == 1:
                    batch[0][1].set_exception(exc)
                else:
                    logger.warning("a batch of %d photos failed to encode (%s); encoding each alone", len(batch), exc)
                    self._one_by_one(batch)
            else:
                for row, (_, future) in enumerate(batch):
                    future.set_result(vectors[row : row + 1])
            if self._observe is not None:
                self._observe(len(batch), time.perf_counter() - started)

    def _one_by_one(self, batch: list[tuple[Any, Future]]) -> None:
        for item, future in batch:
            try:
                future.set_result(self._encode_batch([item])[0:1])
            except Exception as exc:  # noqa: BLE001 - handed to the one request it belongs to
                future.set_exception(exc)
