"""Reaching Milvus: the client connection, pymilvus's errors told apart (a server that cannot be reached
now, not damage), and the Milvus Lite servers this process runs.

Milvus Lite runs its server inside this process, one per database file; several open indexes over the
same file share it, and the last one closed stops it. The ``milvus`` backend itself
(:mod:`clothsim.index.milvus_backend`) builds, searches and saves collections over these connections.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from clothsim.errors import ClothsimError
from clothsim.index.ann_state import quiet_faiss_loader
from clothsim.index.base import BackendIndexError, BackendUnavailable, backend_dir, rebuild_hint

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore

logger = logging.getLogger(__name__)

NAME = "milvus"
INSTALL_HINT = "pip install 'clothsim[milvus]'"
LOCAL_DB = "milvus.db"

# Milvus Lite's servers in this process: users per database file (see release_lite).
_LITE_USERS: dict[str, int] = {}
_LITE_LOCK = threading.Lock()


def load_pymilvus() -> Any:
    """The pymilvus module, imported on first use.

    Raises:
        ClothsimError: pymilvus or milvus-lite is not installed (the message says how to install them).
    """
    quiet_faiss_loader()  # Milvus Lite imports FAISS
    try:
        import pymilvus
    except ImportError as exc:
        raise ClothsimError(f"the milvus backend needs pymilvus and milvus-lite ({exc}): {INSTALL_HINT}") from exc
    return pymilvus


@contextmanager
def quiet_engine_logs() -> Iterator[None]:
    """Hold back pymilvus's and Milvus Lite's own error logs (a traceback per failed call) while a database
    is opened: the error clothsim raises names the database and the fix, which is what a user needs."""
    loggers = [logging.getLogger(name) for name in ("pymilvus", "pymilvus.decorators", "milvus_lite",
                                                    "milvus_lite.adapter.grpc.servicer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def default_uri(store: "FeatureStore") -> str:
    """The Milvus Lite database inside the index folder, used when no ``uri`` is given."""
    return str(backend_dir(store, NAME) / LOCAL_DB)


def is_local(uri: str) -> bool:
    """Whether ``uri`` names a Milvus Lite database file rather than a server."""
    return uri.endswith(".db")


def collection_folder(uri: str, physical: str) -> Path:
    """Where Milvus Lite keeps one collection's data and index files."""
    return Path(uri) / "collections" / physical / "partitions"


def release_lite(uri: str) -> None:
    """One user of the Milvus Lite database ``uri`` is done with it; the last one stops its server."""
    path = os.path.abspath(uri)
    with _LITE_LOCK:
        _LITE_USERS[path] = _LITE_USERS.get(path, 1) - 1
        last = _LITE_USERS[path] <= 0
        if last:
            _LITE_USERS.pop(path, None)
    if last:
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:  # pragma: no cover - only Lite URIs get here, and those need milvus-lite
            return
        server_manager_instance.release_server(path)


def connect(store: "FeatureStore", uri: str, options: dict[str, Any], *, creating: bool) -> Any:
    """A ``MilvusClient`` for ``uri``; errors name the database and what to do."""
    pymilvus = load_pymilvus()
    # Dedicated: pymilvus otherwise shares one connection per URI across clients, and one that failed while
    # a server was down is handed to the next client too, so an index reopened after the server came back
    # could not reach it (found by tests/test_index_milvus_server.py).
    kwargs: dict[str, Any] = {"uri": uri, "timeout": options["timeout"], "dedicated": True}
    token = os.environ.get(options["token_env"] or "")
    if token:
        kwargs["token"] = token
    if options.get("db_name"):
        kwargs["db_name"] = options["db_name"]
    local = is_local(uri)
    if local:
        if not creating and not Path(uri).exists():
            raise BackendIndexError(f"the Milvus Lite database {uri} is missing; {rebuild_hint(store, NAME)}")
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        client = pymilvus.MilvusClient(**kwargs)
    except pymilvus.MilvusException as exc:
        reason = getattr(exc, "message", str(exc))
        if local:
            raise BackendIndexError(
                f"could not open the Milvus Lite database {uri} ({reason}): it is open in another process (Milvus "
                "Lite allows one; use a Milvus server with --backend-option uri=http://HOST:19530 to share it), "
                f"or it is damaged; then {rebuild_hint(store, NAME)}") from None
        raise BackendUnavailable(unreachable_message(uri, reason, options)) from None
    if local:
        with _LITE_LOCK:
            path = os.path.abspath(uri)
            _LITE_USERS[path] = _LITE_USERS.get(path, 0) + 1
    return client


def engine_errors() -> tuple[type[BaseException], ...]:
    """What a Milvus call raises: pymilvus's errors, and gRPC's own where pymilvus lets one through (a
    request that timed out)."""
    import grpc

    return (load_pymilvus().MilvusException, grpc.RpcError)


def error_reason(exc: BaseException) -> str:
    """What a pymilvus or gRPC error says, without its traceback."""
    details = getattr(exc, "details", None)
    if callable(details):  # a grpc.RpcError
        return str(details())
    return str(getattr(exc, "message", exc))


def lost_connection(exc: BaseException) -> bool:
    """Whether the server could not be reached or is not ready (rather than refusing the request)."""
    import grpc
    from pymilvus.client.types import Status
    from pymilvus.exceptions import ConnectError, MilvusUnavailableException

    transient = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    if isinstance(exc, grpc.RpcError):
        return callable(getattr(exc, "code", None)) and exc.code() in transient
    code = getattr(exc, "code", None)
    return (isinstance(exc, (MilvusUnavailableException, ConnectError)) or code == Status.CONNECT_FAILED
            or code in transient  # pymilvus's "retry timeout" carries the gRPC status
            or bool(getattr(exc, "retriable", False)))  # e.g. a server still recovering


def unreachable_message(uri: str, reason: str, options: dict[str, Any]) -> str:
    """The message of a database that cannot be used or reached now, with what to check."""
    if is_local(uri):
        return f"could not use the Milvus Lite database {uri} ({reason})"
    return (f"could not reach Milvus at {uri} ({reason}); is the server running, and is the token in "
            f"${options['token_env']}?")


def drain_lite(uri: str, physical: str) -> None:
    """Milvus Lite builds segment indexes on a background thread and reports them finished at once;
    its engine's own drain point (``Collection._wait_for_bg``) is the only way to wait for them."""
    try:
        from milvus_lite.server_manager import server_manager_instance

        entry = server_manager_instance._servers.get(os.path.abspath(uri))
        wait = getattr(entry[1].get_collection(physical), "_wait_for_bg", None) if entry else None
    except Exception as exc:  # internals of another package: never fail a build over them
        logger.debug("milvus: cannot wait for Milvus Lite's index build (%s); searches may start slower", exc)
        return
    if wait is not None:
        wait()


class NoStore:
    """Stands in for a store in messages when only connectivity is checked."""

    root = "<index>"
