"""A real uvicorn server on a free 127.0.0.1 port, in a thread, with the protocol and limits ``clothsim serve``
uses: for the web tests that need real sockets (concurrency, header limits, shutdown)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def live_server(app: Any, **options: Any) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL. ``options`` go to
    :func:`clothsim.web.server.uvicorn_options` (header timeout, connection limit)."""
    import uvicorn

    from clothsim.web.server import uvicorn_options

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", **uvicorn_options(**options))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
