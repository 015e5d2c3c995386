"""Many clients at once on a real server: every answer right, and the CPU work on the server's own threads.

Throughput as clients grow is a speed figure, measured by ``benchmarks/load_test.py --clients 1,8,32``
(docs/serving.md); here only what must hold whatever the machine's speed.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

from _live_server import live_server  # noqa: E402
from clothsim.web.app import create_app  # noqa: E402
from clothsim.web.compute import blas_threads, plan_threads  # noqa: E402
from helpers import png_bytes  # noqa: E402

CLIENTS = 32


def _ask(client: httpx.Client, url: str, job: tuple[str, object]) -> list[int]:
    kind, value = job
    if kind == "upload":
        response = client.post(url + "/api/search", files={"image": ("q.png", value, "image/png")}, data={"k": "6"})
    else:
        response = client.post(url + "/api/search", data={"id": str(value), "k": "6"})
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


def test_many_concurrent_clients_all_get_the_sequential_answers(catalog):
    rng = np.random.default_rng(7)
    jobs: list[tuple[str, object]] = [("id", int(i)) for i in rng.integers(0, 24, 96)]
    jobs += [("upload", png_bytes(tuple(int(v) for v in rng.integers(0, 256, 3)), stripe=int(rng.integers(0, 200))))
             for _ in range(32)]
    order = rng.permutation(len(jobs))
    jobs = [jobs[i] for i in order]
    expected = [[h.id for h in (catalog.search_by_id(v, k=6) if kind == "id" else catalog.search(v, k=6))]
                for kind, v in jobs]
    with live_server(create_app(catalog), max_connections=CLIENTS * 2) as url:
        barrier = threading.Barrier(CLIENTS)

        def client(start: int) -> list[tuple[int, list[int]]]:
            answers = []
            with httpx.Client(timeout=60) as session:
                barrier.wait()  # every client starts at once
                for n in range(start, len(jobs), CLIENTS):
                    answers.append((n, _ask(session, url, jobs[n])))
            return answers

        with ThreadPoolExecutor(CLIENTS) as pool:
            got = dict(pair for answers in pool.map(client, range(CLIENTS)) for pair in answers)
    assert [got[n] for n in range(len(jobs))] == expected


def test_searches_run_on_the_compute_threads_with_one_blas_thread_each(catalog):
    seen: list[tuple[str, dict[str, int]]] = []
    search = catalog.backend.search

    def spying_search(*args, **kwargs):
        seen.append((threading.current_thread().name, blas_threads()))
        return search(*args, **kwargs)

    catalog.backend.search = spying_search
    app = create_app(catalog)
    seen.clear()  # the warm-up's search, before any request
    with live_server(app) as url, httpx.Client(timeout=30) as client:
        for item in range(4):
            _ask(client, url, ("id", item))
        _ask(client, url, ("upload", png_bytes((200, 30, 30))))
    assert len(seen) == 5
    for thread, libraries in seen:
        assert thread.startswith("clothsim-compute"), thread
        assert libraries and set(libraries.values()) == {1}, libraries


def test_the_compute_threads_are_the_cores_shared_between_workers():
    assert plan_threads(workers=1, cores=8).search_threads == 8
    assert plan_threads(workers=2, cores=8).encoder_threads == 4
    assert plan_threads(workers=4, cores=2).search_threads == 1  # never below one
    with pytest.raises(ValueError, match="workers"):
        plan_threads(workers=0)


def test_the_server_owns_the_encoders_threads_and_they_sleep_between_batches(tiny_encoder):
    from clothsim.encoders import create_encoder
    from clothsim.encoders.base import collate
    from clothsim.web.compute import own_encoder_threads

    encoder = create_encoder("efficientnet_lite0")  # the shipped model, on ONNX Runtime
    batch = collate([np.random.default_rng(0).normal(size=(3, 224, 224)).astype(np.float32)])
    before = encoder.embed(batch)
    assert own_encoder_threads(encoder, 1)
    options = encoder.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    np.testing.assert_allclose(encoder.embed(batch), before, atol=1e-6)
    assert not own_encoder_threads(tiny_encoder, 1)  # a runtime without the setting keeps its own
