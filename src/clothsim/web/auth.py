"""Who may write: one API key, read from an environment variable, sent as ``Authorization: Bearer <key>``.

Writes are off unless the server is given a key. A request without the header is refused with 401 (and
``WWW-Authenticate: Bearer``), one with another key with 403. The key is compared in constant time
(:func:`hmac.compare_digest` over SHA-256 digests, so neither the content nor the length of the key
shows in how long a refusal takes), and it never appears in a response or a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from typing import TYPE_CHECKING

from clothsim.errors import UsageError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

#: The environment variable ``clothsim serve --writes`` reads the key from, unless told another.
DEFAULT_KEY_ENV = "CLOTHSIM_API_KEY"
#: Shorter keys are refused: a guessable key would open writes to anyone who can reach the server.
MIN_KEY_CHARS = 16


class AuthError(Exception):
    """A write request without a valid key; ``status`` is 401 (no key) or 403 (a wrong key)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ApiKey:
    """The key that writes must present.

    Args:
        key: The secret itself (at least :data:`MIN_KEY_CHARS` characters).

    Raises:
        ValueError: the key is too short.
    """

    def __init__(self, key: str) -> None:
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"the API key must be at least {MIN_KEY_CHARS} characters, got {len(key)}")
        self._digest = hashlib.sha256(key.encode("utf-8")).digest()

    @classmethod
    def from_env(cls, variable: str = DEFAULT_KEY_ENV) -> "ApiKey":
        """The key in environment variable ``variable``.

        Raises:
            UsageError: the variable is unset, empty or too short (the message names it, never its value).
        """
        value = os.environ.get(variable, "")
        if not value:
            raise UsageError(f"writes need an API key in the environment variable {variable}, which is not set")
        try:
            return cls(value)
        except ValueError as exc:
            raise UsageError(f"{variable}: {exc}") from None

    def matches(self, given: str) -> bool:
        """Whether ``given`` is the key, in time that depends on neither."""
        return hmac.compare_digest(hashlib.sha256(given.encode("utf-8")).digest(), self._digest)

    def check(self, authorization: str | None) -> None:
        """Accept an ``Authorization`` header value carrying the key as a bearer token.

        Raises:
            AuthError: 401 without a bearer token, 403 with another key.
        """
        if not authorization:
            raise AuthError(401, "writes need an API key: send it as 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "the Authorization header must be 'Bearer <key>'")
        if not self.matches(token.strip()):
            logger.warning("a write with a wrong API key was refused")
            raise AuthError(403, "this API key may not write to the catalogue")

    def __repr__(self) -> str:
        return "ApiKey(<hidden>)"


class WriteAuthMiddleware:
    """Checks the API key of every write (``POST``, ``PUT``, ``PATCH``, ``DELETE`` under ``/api/items``)
    before the application reads its body: a request without the key costs the server its headers only.

    Args:
        app: The ASGI application.
        key: The key writes must present.
    """

    WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def __init__(self, app: "ASGIApp", key: ApiKey) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if (scope["type"] == "http" and scope.get("method") in self.WRITE_METHODS
                and scope.get("path", "").startswith("/api/items")):
            authorization = None
            for name, value in scope.get("headers", []):
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                    break
            try:
                self.key.check(authorization)
            except AuthError as exc:
                headers = [(b"content-type", b"application/json")]
                if exc.status == 401:
                    headers.append((b"www-authenticate", b'Bearer realm="clothsim"'))
                body = json.dumps({"detail": exc.message}).encode("utf-8")
                headers += [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
                await send({"type": "http.response.start", "status": exc.status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
