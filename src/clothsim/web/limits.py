"""ASGI middlewares that bound what one request may cost: its body's size and how long it may take.

:class:`BodySizeLimitMiddleware` refuses request bodies over a byte limit, whatever the client claims.
:class:`BodyTimeoutMiddleware` drops bodies that stall or trickle.

The size limit answers 413 at once when ``Content-Length`` is over the limit, and otherwise counts the bytes as
the application reads them, so a client that sends no length (chunked) or a wrong one cannot push
more than the limit into the form parser's memory or temporary files.

Written here rather than taken from the framework because only recent Starlette/FastAPI releases
ship a body limit, and the page needs the refusal as JSON (``{"detail": ...}``) like every other error.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


class BodySizeLimitMiddleware:
    """Refuse (413) HTTP request bodies larger than ``max_body_bytes``.

    Args:
        app: The ASGI application to protect.
        max_body_bytes: Largest accepted body, multipart overhead included.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be at least 1, got {max_body_bytes}")
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _message(self) -> str:
        return f"request body is larger than the limit of {_mib(self.max_body_bytes)}"

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": self._message()}).encode("utf-8")
        await send({
            "type": "http.response.start",
            "status": 413,
            # The rest of the body is never read, so the connection cannot be reused.
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        if declared is not None and declared > self.max_body_bytes:
            logger.info("refused %s %s: Content-Length %d over %d", scope.get("method"), scope.get("path"),
                        declared, self.max_body_bytes)
            await self._refuse(send)
            return

        received = 0
        refused = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    refused = True
                    logger.info("refused %s %s: body passed %d bytes while reading", scope.get("method"),
                                scope.get("path"), self.max_body_bytes)
                    if not response_started:
                        await self._refuse(send)
                    # To the application the client has gone: its parser stops, its reply is dropped.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)


class BodyTimeoutMiddleware:
    """Drop (408) a request whose body stalls or trickles: no bytes for ``idle_timeout_s``, or not complete
    after ``total_timeout_s``. Slow clients then cannot hold a worker, a connection and a spool file open
    indefinitely (the header phase is bounded by the server's protocol, see :mod:`clothsim.web.server`).

    Args:
        app: The ASGI application to protect.
        idle_timeout_s: Longest pause between two pieces of the body.
        total_timeout_s: Longest time for the whole body, from the request's start.
    """

    def __init__(self, app: ASGIApp, idle_timeout_s: float, total_timeout_s: float) -> None:
        if idle_timeout_s <= 0 or total_timeout_s <= 0:
            raise ValueError(f"timeouts must be positive, got {idle_timeout_s} and {total_timeout_s}")
        self.app = app
        self.idle_timeout_s = float(idle_timeout_s)
        self.total_timeout_s = float(total_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_timeout_s
        state = {"body_done": False, "timed_out": False, "started": False}

        async def timed_receive() -> Message:
            if state["timed_out"]:
                return {"type": "http.disconnect"}
            if state["body_done"]:
                return await receive()  # only a disconnect can come now; no deadline on waiting for it
            wait = min(self.idle_timeout_s, deadline - loop.time())
            try:
                if wait <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), wait)
            except asyncio.TimeoutError:
                state["timed_out"] = True
                logger.info("dropped %s %s: the request body stalled", scope.get("method"), scope.get("path"))
                if not state["started"]:
                    await _send_json(send, 408, "the request body arrived too slowly; the connection is closed")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request" and not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def guarded_send(message: Message) -> None:
            if state["timed_out"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, timed_receive, guarded_send)


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
