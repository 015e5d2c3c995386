"""The web service's bounds: slow clients dropped, memory for decoding budgeted, errors that do not echo.

Header and body deadlines are tested on a real uvicorn server on loopback (with the protocol and
middleware ``clothsim serve`` uses); the memory budget and the error messages through the application.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
import warnings

import pytest

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
pytest.importorskip("multipart", reason="python-multipart is not installed")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import uvicorn  # noqa: E402

from clothsim.web.app import create_app  # noqa: E402
from clothsim.web.limits import BodyTimeoutMiddleware  # noqa: E402
from clothsim.web.server import MAX_HEADER_BYTES, uvicorn_options  # noqa: E402
from clothsim.web.service import (DECODE_BYTES_PER_PIXEL, HEADROOM_BYTES, MemoryBudget,  # noqa: E402
                                  QueryRejected, resident_bytes)
from helpers import png_bytes  # noqa: E402

RED = (200, 30, 30)


# ----- slow clients, on a real server ---------------------------------------------------------------------
@pytest.fixture()
def server(catalog):
    """A real uvicorn server on a free loopback port with 0.5 s header and 1 s body deadlines."""
    app = create_app(catalog, body_idle_timeout_s=0.5, body_timeout_s=1.0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                            **uvicorn_options(header_timeout_s=0.5, max_connections=16))
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not instance.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield port
    instance.should_exit = True
    thread.join(10)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed the connection within ``seconds``, and what it sent before."""
    sock.settimeout(seconds)
    received = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True, received
            received += chunk
    except socket.timeout:
        return False, received
    except ConnectionResetError:
        return True, received


def test_a_client_that_never_finishes_its_headers_is_dropped(server):
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Le")
        started = time.monotonic()
        closed, _ = _closed_within(sock, 5)
        assert closed and time.monotonic() - started < 3


def test_a_silent_connection_is_dropped(server):
    with socket.create_connection(("127.0.0.1", server)) as sock:
        assert _closed_within(sock, 5)[0]


def test_a_client_that_declares_a_body_and_stalls_gets_408(server):
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 10000000\r\n\r\n--b\r\n")
        started = time.monotonic()
        closed, received = _closed_within(sock, 5)
        assert closed and time.monotonic() - started < 3
        assert received.startswith(b"HTTP/1.1 408")


def test_a_trickling_body_is_dropped_at_the_total_deadline(server):
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 10000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; "
                     b"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n")
        started = time.monotonic()
        received = b""
        while time.monotonic() - started < 4:
            try:
                sock.sendall(b"x")  # one byte every 0.2 s: never idle for the 0.5 s idle deadline
            except OSError:
                break
            closed, part = _closed_within(sock, 0.2)
            received += part
            if closed:
                break
        assert received.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 3


def test_normal_requests_are_served_while_slow_clients_wait(server):
    slow = [socket.create_connection(("127.0.0.1", server)) for _ in range(8)]
    try:
        for sock in slow:
            sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        import httpx

        response = httpx.post(f"http://127.0.0.1:{server}/api/search", data={"id": "1", "k": "3"}, timeout=10)
        assert response.status_code == 200 and len(response.json()["results"]) == 3
    finally:
        for sock in slow:
            sock.close()


def _get_with_header(port: int, header_bytes: int, before: bytes = b"") -> list[bytes]:
    """Status lines the server sends for ``before`` followed by a GET whose one header is ``header_bytes``
    long, all written at once (one read on the server's side)."""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * header_bytes + b"\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(before + request)
        closed, received = _closed_within(sock, 5)
    assert closed
    return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", received)


def test_a_request_head_over_the_limit_in_one_read_is_431(server):
    assert _get_with_header(server, 30_000) == [b"HTTP/1.1 431 Request Header Fields Too Large"]


def test_a_request_head_under_the_limit_is_served(server):
    assert _get_with_header(server, MAX_HEADER_BYTES - 1024) == [b"HTTP/1.1 200 OK"]


def test_an_oversized_head_pipelined_behind_a_request_is_431(server):
    first = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _get_with_header(server, 30_000, before=first) == [b"HTTP/1.1 200 OK",
                                                             b"HTTP/1.1 431 Request Header Fields Too Large"]


def test_a_request_head_that_grows_past_the_limit_is_closed(server):
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 4 * MAX_HEADER_BYTES:
                sock.sendall(b"a" * 2048)
                sent += 2048
                time.sleep(0.005)
        except OSError:
            pass  # closed by the server while sending: what this test expects
        assert _closed_within(sock, 5)[0]
    assert sent < 4 * MAX_HEADER_BYTES


def test_the_body_deadline_does_not_apply_once_the_body_is_in():
    sent = []

    async def app(scope, receive, send):
        await receive()  # the whole body
        await asyncio.sleep(0.3)  # slow work afterwards is not the client's fault
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b"x", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(BodyTimeoutMiddleware(app, 0.1, 0.1)({"type": "http", "method": "POST", "path": "/"}, receive, send))
    assert sent[0]["status"] == 200


# ----- memory -------------------------------------------------------------------------------------------------
def test_uploads_reserve_memory_and_get_503_with_retry_after_when_it_is_taken(catalog):
    app = create_app(catalog, queue_timeout_s=0.2)
    service = app.state.service
    data = png_bytes(RED, (200, 150))
    with TestClient(app) as client:
        assert client.post("/api/search", files={"image": ("a.png", data, "image/png")}).status_code == 200
        held = service.budget.capacity - 1000  # another request holds nearly everything
        with service.budget.hold(held, timeout=0):
            response = client.post("/api/search", files={"image": ("a.png", data, "image/png")})
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert "busy" in response.json()["detail"]
            # Searching by id decodes nothing and needs no reservation.
            assert client.post("/api/search", data={"id": "2"}).status_code == 200
        assert service.budget.used == 0
        assert service.budget.peak >= len(data) + 200 * 150 * DECODE_BYTES_PER_PIXEL


def test_an_upload_larger_than_the_whole_budget_is_413_before_decoding(catalog):
    app = create_app(catalog)
    app.state.service.budget = MemoryBudget(10_000)
    with TestClient(app) as client:
        response = client.post("/api/search", files={"image": ("a.png", png_bytes(RED, (100, 100)), "image/png")})
    assert response.status_code == 413 and "memory budget" in response.json()["detail"]


def test_a_budget_below_what_start_up_uses_is_refused(catalog):
    with pytest.raises(ValueError, match="memory budget of 100 MiB leaves too little"):
        create_app(catalog, memory_budget_mb=100)
    app = create_app(catalog, memory_budget_mb=64 * 1024)
    # What requests get is the budget less what the process holds at rest (the whole test run's
    # memory here) and the headroom: never more than the budget, and all of the rest of it.
    at_rest = resident_bytes()
    capacity = app.state.service.budget.capacity
    assert at_rest and capacity <= 64 * 2**30 - HEADROOM_BYTES - 0.5 * at_rest
    assert capacity >= 64 * 2**30 - HEADROOM_BYTES - at_rest - 256 * 2**20


def test_the_budget_waits_then_admits_when_memory_frees_up():
    budget = MemoryBudget(100)
    order = []

    def second():
        with budget.hold(80, timeout=5):
            order.append("second")

    with budget.hold(60, timeout=0):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.2)
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "second"] and budget.used == 0
    with pytest.raises(QueryRejected) as info:
        with budget.hold(101, timeout=0):
            pass
    assert info.value.kind == "too_large"


# ----- what errors echo ---------------------------------------------------------------------------------------
def test_errors_quote_only_a_short_prefix_of_the_input(catalog):
    huge = "x" * 100_000
    with TestClient(create_app(catalog)) as client:
        response = client.post("/api/search", data={"id": "1", "category": huge})
        assert response.status_code == 422 and len(response.text) < 1000
        assert "100000 characters" in response.json()["detail"]
        response = client.post("/api/search", data={"id": huge})
        assert response.status_code == 422 and len(response.text) < 1000
        response = client.post("/api/search", data={"id": "1", "k": "9" * 50_000})
        assert response.status_code == 422 and len(response.text) < 1000
        response = client.post("/api/search", files={"image": ("y" * 300 + ".png", png_bytes(RED, (8, 8)), "image/png")})
        assert response.status_code == 200 and len(response.json()["query"]["filename"]) <= 103
        response = client.post("/api/search", files={"image": ("y" * 50_000 + ".png", png_bytes(RED, (8, 8)), "image/png")})
        assert response.status_code in (200, 400, 422) and len(response.text) < 1000
