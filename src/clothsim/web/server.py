"""How ``clothsim serve`` runs uvicorn: a header deadline and size limit, a connection limit, short keep-alive.

uvicorn bounds idle keep-alive connections but not a client that opens a connection and sends its
request headers slowly (or never finishes them): such a client holds a socket and a slot forever.
:class:`HeaderTimeoutProtocol` closes a connection whose request headers are not complete within
``header_timeout_s`` of their first byte (or of the connection opening). Bodies are bounded by
:class:`clothsim.web.limits.BodyTimeoutMiddleware`.

It also bounds the size of a request head (request line and headers) at :data:`MAX_HEADER_BYTES`, answering
431. uvicorn's ``h11_max_incomplete_event_size`` alone does not: h11 applies it only to a head that is
still *incomplete* in its buffer, and asyncio hands over up to 256 KiB per read, so a 30 KB head that
arrives in one read is complete at once and was accepted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from clothsim.defaults import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS, DEFAULT_SHUTDOWN_TIMEOUT_S

logger = logging.getLogger(__name__)

KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 16 * 1024
# The blank line that ends a request head; h11 accepts bare LF line endings too.
_HEAD_END = re.compile(rb"\n\r?\n")


def head_bytes(buffer: bytes) -> int:
    """Length of the request head at the start of ``buffer`` (to its blank line), or of all of ``buffer``
    when the head is not complete yet."""
    end = _HEAD_END.search(buffer)
    return end.end() if end else len(buffer)


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers take too long or are too large."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # a new request starts on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_timer()

    def handle_events(self) -> None:
        # Every request head passes through here before h11 parses it into a request, whether it came in
        # this read or was pipelined behind the previous request: measure it while h11 still waits for one.
        if self.conn.their_state is h11.IDLE:
            size = head_bytes(self.conn.trailing_data[0])
            if size > MAX_HEADER_BYTES:
                self._refuse_large_head(size)
                return
        super().handle_events()

    def _refuse_large_head(self, size: int) -> None:
        logger.info("refused a request from %s: its head passed %d bytes, over the limit of %d", self.client, size,
                    MAX_HEADER_BYTES)
        body = json.dumps({"detail": f"the request line and headers are over the limit of {MAX_HEADER_BYTES} "
                                     "bytes"}).encode("utf-8")
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode("ascii") + b"\r\nconnection: close\r\n\r\n"
                             + body)
        self._disarm_header_timer()
        self.transport.close()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            logger.info("closing a connection from %s: request headers not complete after %.0f s",
                        self.client, self.header_timeout_s)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


def configure_protocol(header_timeout_s: float) -> None:
    """Set the header deadline of :class:`HeaderTimeoutProtocol` itself: for worker processes, which uvicorn
    gives the protocol by its import name (a class made on the fly cannot be sent to them)."""
    if header_timeout_s <= 0:
        raise ValueError(f"header_timeout_s must be positive, got {header_timeout_s}")
    HeaderTimeoutProtocol.header_timeout_s = float(header_timeout_s)


def uvicorn_options(header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
                    max_connections: int = DEFAULT_MAX_CONNECTIONS,
                    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
                    workers: int = 1) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` that bound slow and numerous clients.

    Args:
        header_timeout_s: Longest time for a request's headers to arrive.
        max_connections: Open connections (and tasks) beyond which new requests get 503, shared among
            the workers.
        shutdown_timeout_s: On SIGTERM or SIGINT, how long the requests in flight may take to finish
            (uvicorn stops accepting connections at once, closes idle ones, waits for the others up to
            this, then runs the application's shutdown: queued writes are applied, threads stopped).
        workers: Worker processes; with more than one, the protocol goes by its import name and each worker
            calls :func:`configure_protocol` (:mod:`clothsim.web.workers` does).
    """
    if header_timeout_s <= 0 or max_connections < 1 or shutdown_timeout_s <= 0 or workers < 1:
        raise ValueError(f"header_timeout_s and shutdown_timeout_s must be positive, max_connections and workers "
                         f"at least 1, got {header_timeout_s}, {shutdown_timeout_s}, {max_connections}, {workers}")
    if workers > 1:
        protocol: Any = f"{__name__}:{HeaderTimeoutProtocol.__name__}"
    else:
        protocol = type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,),
                        {"header_timeout_s": float(header_timeout_s)})
    return {"http": protocol, "limit_concurrency": max(1, -(-int(max_connections) // workers)),
            "timeout_keep_alive": KEEP_ALIVE_S,
            "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
            "timeout_graceful_shutdown": max(1, round(shutdown_timeout_s))}
