"""What an operator relies on: /metrics in the Prometheus format, JSON access logs, and a shutdown that lets the
requests in flight finish."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
pytest.importorskip("prometheus_client", reason="the web extra (prometheus-client) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from _live_server import free_port  # noqa: E402
from clothsim.web.app import create_app  # noqa: E402
from clothsim.web.auth import ApiKey  # noqa: E402
from clothsim.web.metrics import ACCESS_LOGGER  # noqa: E402
from clothsim.web.writes import WriteSettings  # noqa: E402
from helpers import png_bytes  # noqa: E402

KEY = "operations-test-key-0123456789"
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"
SRC = Path(__file__).resolve().parents[1] / "src"


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}, read by prometheus_client's own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_metrics_count_requests_batches_writes_and_the_index(catalog, tmp_path):
    app = create_app(catalog, writes=WriteSettings(ApiKey(KEY), tmp_path / "uploads"))
    with TestClient(app) as client:
        for item in range(3):
            assert client.post("/api/search", data={"id": str(item), "k": "2"}).status_code == 200
        assert client.post("/api/search", data={"id": "999"}).status_code == 404
        assert client.post("/api/search", files={"image": ("q.png", png_bytes((200, 30, 30)), "image/png")}
                           ).status_code == 200
        assert client.get("/api/items/4/image").status_code == 200
        assert client.post("/api/items", files={"image": ("n.png", png_bytes((30, 180, 40)), "image/png")},
                           data={"category": "green"}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 201
        assert client.delete("/api/items/5", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert client.delete("/api/items/6").status_code == 401
        metrics = scrape(client)

    def value(name: str, **labels: str) -> float:
        return metrics[(name, tuple(sorted(labels.items())))]

    search = {"route": "/api/search", "method": "POST"}
    assert value("clothsim_http_requests_total", status="200", **search) == 4
    assert value("clothsim_http_requests_total", status="404", **search) == 1
    assert value("clothsim_http_request_duration_seconds_count", **search) == 5
    assert value("clothsim_http_requests_total", route="/api/items/{item_id}/image", method="GET", status="200") == 1
    assert value("clothsim_http_requests_total", route="/api/items/{item_id}", method="DELETE", status="401") == 1
    assert value("clothsim_encode_batch_size_count") == 2  # the upload search and the added photo
    assert value("clothsim_encode_batch_size_sum") == 2
    assert value("clothsim_writes_total", kind="add") == 1 and value("clothsim_writes_total", kind="delete") == 1
    assert value("clothsim_index_items") == 24  # +1 added -1 deleted
    assert value("clothsim_index_reloads_total") == 2  # one state per committed write group
    assert value("clothsim_ready") == 1
    assert value("clothsim_memory_budget_bytes") == app.state.service.budget.capacity > 0
    assert value("clothsim_memory_budget_used_bytes") == 0
    assert value("clothsim_http_requests_in_flight") == 1  # the scrape itself
    assert value("process_resident_memory_bytes") > 0


def test_ready_is_a_metric_too_before_and_after_the_warm_up(catalog, tiny_encoder):
    import threading

    release = threading.Event()
    original = tiny_encoder.embed
    tiny_encoder.embed = lambda batch: (release.wait(60), original(batch))[1]
    app = create_app(catalog, warm_in_background=True)
    with TestClient(app) as client:
        assert scrape(client)[("clothsim_ready", ())] == 0
        release.set()
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert scrape(client)[("clothsim_ready", ())] == 1


def test_the_access_log_is_one_json_line_per_request(catalog, caplog):
    with TestClient(create_app(catalog, access_log=True)) as client, caplog.at_level(logging.INFO, ACCESS_LOGGER):
        client.post("/api/search", data={"id": "3", "k": "2"})
        client.get("/api/items/2/image")
        client.get("/no/such/page")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert [(line["method"], line["route"], line["status"]) for line in lines] == [
        ("POST", "/api/search", 200), ("GET", "/api/items/{item_id}/image", 200), ("GET", "<unmatched>", 404)]
    assert lines[1]["path"] == "/api/items/2/image" and lines[1]["response_bytes"] > 0
    assert all(line["duration_ms"] >= 0 and line["client"] and line["pid"] == os.getpid() for line in lines)


def test_no_access_log_unless_asked(catalog, caplog):
    with TestClient(create_app(catalog)) as client, caplog.at_level(logging.INFO, ACCESS_LOGGER):
        client.post("/api/search", data={"id": "3"})
    assert not [r for r in caplog.records if r.name == ACCESS_LOGGER]


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish(tmp_path):
    from clothsim.cli.main import main

    catalog = tmp_path / "catalog" / "hat"
    catalog.mkdir(parents=True)
    for photo in sorted((SAMPLE / "train" / "hat").glob("*.jpg"))[:3]:
        (catalog / photo.name).write_bytes(photo.read_bytes())
    assert main(["-q", "index", str(catalog.parent), "--out", str(tmp_path / "index")]) == 0
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "clothsim.cli.main", "serve", "--index", str(tmp_path / "index"),
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=str(SRC)))
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        photo = next((SAMPLE / "test" / "hat").glob("*.jpg")).read_bytes()
        body = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n"
                b"Content-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--b--\r\n")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:1000])
            time.sleep(0.5)
            server.send_signal(signal.SIGTERM)  # while the request's body is still arriving
            time.sleep(1.0)
            with pytest.raises(OSError):  # no new connections once shutting down
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            sock.sendall(body[1000:])
            sock.settimeout(60)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["query"]["kind"] == "upload"
        # uvicorn finishes, runs the application's shutdown, then exits by the signal it was sent.
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
        errors = server.stderr.read().decode(errors="replace")
        assert "Traceback" not in errors and "ERROR" not in errors, errors
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_invented_http_methods_share_one_metric_label(catalog):
    with TestClient(create_app(catalog)) as client:
        for number in range(30):
            client.request(f"M{number}X", "/api/search")
        client.get("/health")
        text = client.get("/metrics").text
    methods = {sample.labels["method"] for family in text_string_to_metric_families(text)
               if family.name == "clothsim_http_requests" for sample in family.samples}
    assert methods == {"GET", "other"}  # 30 invented methods, one label: the metrics stay bounded


def test_damage_found_while_serving_is_a_503_and_the_server_stops_being_ready(catalog):
    import numpy as np

    from clothsim.features.store import FeatureStore

    with TestClient(create_app(catalog)) as client:
        assert client.get("/ready").status_code == 200
        store = FeatureStore.open(catalog.store.root)
        segment = store.segments[0].vectors_path
        row = 5
        vectors = np.load(segment, mmap_mode="r+")
        vectors[row] = 0.0  # the bytes of one row scribbled in place, after the start-up check
        vectors.flush()
        del vectors
        answer = client.post("/api/search", data={"id": str(row + 1), "k": "23"})
        assert answer.status_code == 503 and answer.headers["retry-after"]
        assert "damaged" in answer.json()["detail"] and str(catalog.store.root) not in answer.text
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["detail"] == "the index is damaged"
        assert client.get("/health").json()["ready"] is False
