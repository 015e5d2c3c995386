"""Uploads encoded together: the vectors of one-at-a-time encoding, and no upload held up or failed by another.

The encoder is the shipped efficientnet_lite0 model on ONNX Runtime, the photos the packaged clothing
sample (CC0); the server tests run a real uvicorn server on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

from _live_server import live_server  # noqa: E402
from clothsim.data.folder import read_folder_catalog  # noqa: E402
from clothsim.encoders.base import collate  # noqa: E402
from clothsim.images import load_image  # noqa: E402
from clothsim.similarity_index import SimilarityIndex  # noqa: E402
from clothsim.web.app import create_app  # noqa: E402
from clothsim.web.batching import EncodeBatcher  # noqa: E402
from helpers import png_bytes  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"
PHOTOS = 12


@pytest.fixture(scope="module")
def real_index(tmp_path_factory) -> SimilarityIndex:
    """Four training photos per category of the packaged sample, indexed with the shipped ONNX model."""
    records = [r for r in read_folder_catalog(SAMPLE) if r.split == "train"]
    chosen = [r for category in sorted({r.category for r in records})
              for r in sorted((r for r in records if r.category == category), key=lambda r: r.path)[:4]]
    index, _ = SimilarityIndex.build(chosen, tmp_path_factory.mktemp("real") / "index", num_workers=0,
                                     progress=False)
    return index


@pytest.fixture(scope="module")
def query_paths() -> list[Path]:
    return sorted(SAMPLE.glob("test/*/*.jpg"))[::5][:PHOTOS]


def _inputs(encoder, paths: list[Path]) -> list[np.ndarray]:
    return [encoder.transform(load_image(str(p), min_side=encoder.decode_min_side)) for p in paths]


def test_announced_photos_are_encoded_in_one_batch_with_the_vectors_of_one_at_a_time(real_index, query_paths):
    encoder = real_index.encoder
    inputs = _inputs(encoder, query_paths)
    alone = np.concatenate([encoder.embed(collate([item])) for item in inputs])
    sizes: list[int] = []
    batcher = EncodeBatcher(lambda items: encoder.embed(collate(items)), max_batch=32, max_wait_s=30,
                            observe=lambda size, seconds: sizes.append(size))
    tickets = [batcher.announce() for _ in inputs]  # every photo is on its way before the first arrives
    try:
        with ThreadPoolExecutor(len(inputs)) as pool:
            got = list(pool.map(lambda pair: pair[0].encode(pair[1], timeout=60), zip(tickets, inputs)))
    finally:
        batcher.close()
    assert sizes == [len(inputs)]
    np.testing.assert_allclose(np.concatenate(got), alone, atol=1e-5)


def test_a_lone_photo_does_not_wait_for_company(real_index, query_paths):
    encoder = real_index.encoder
    item = _inputs(encoder, query_paths[:1])[0]
    batcher = EncodeBatcher(lambda items: encoder.embed(collate(items)), max_wait_s=60)
    try:
        started = time.monotonic()
        batcher.encode(item, timeout=120)
        assert time.monotonic() - started < 30  # not the 60 s a batch may wait for announced photos
        # An announcement withdrawn (its photo failed to decode) is not waited for either.
        batcher.announce().withdraw()
        waiting = batcher.announce()
        started = time.monotonic()
        waiting.encode(item, timeout=120)
        assert time.monotonic() - started < 30
    finally:
        batcher.close()


def test_a_photo_that_breaks_its_batch_fails_alone(real_index, query_paths):
    encoder = real_index.encoder
    inputs = _inputs(encoder, query_paths[:5])
    broken = np.zeros((4, 224, 224), dtype=np.float32)  # four channels: no batch can hold it, nor can it run alone
    items = inputs[:2] + [broken] + inputs[2:]
    batcher = EncodeBatcher(lambda batch: encoder.embed(collate(batch)), max_wait_s=30)
    tickets = [batcher.announce() for _ in items]
    try:
        with ThreadPoolExecutor(len(items)) as pool:
            futures = [pool.submit(ticket.encode, item, 60) for ticket, item in zip(tickets, items)]
            outcomes = []
            for future in futures:
                try:
                    outcomes.append(future.result())
                except ValueError as exc:
                    outcomes.append(exc)
    finally:
        batcher.close()
    assert isinstance(outcomes[2], ValueError)
    good = [outcomes[i] for i in (0, 1, 3, 4, 5)]
    alone = np.concatenate([encoder.embed(collate([item])) for item in inputs])
    np.testing.assert_allclose(np.concatenate(good), alone, atol=1e-5)


def test_concurrent_uploads_to_the_server_get_one_at_a_time_answers(real_index, query_paths):
    expected = {p.name: real_index.search(p, k=5) for p in query_paths}
    app = create_app(real_index, batch_wait_s=0.05)
    with live_server(app) as url:
        barrier = threading.Barrier(len(query_paths))

        def upload(path: Path) -> dict:
            with httpx.Client(timeout=120) as client:
                barrier.wait()
                response = client.post(url + "/api/search", files={"image": (path.name, path.read_bytes())},
                                       data={"k": "5"})
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(len(query_paths)) as pool:
            answers = list(pool.map(upload, query_paths))
    for path, answer in zip(query_paths, answers):
        hits = expected[path.name]
        assert [r["id"] for r in answer["results"]] == [h.id for h in hits]
        np.testing.assert_allclose([r["score"] for r in answer["results"]], [h.score for h in hits], atol=1e-5)


def test_a_slow_upload_does_not_delay_the_others(catalog):
    data = png_bytes((200, 30, 30), (64, 48))
    boundary = b"slowboundary"
    head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="slow.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    tail = b"\r\n--" + boundary + b"--\r\n"
    body = head + data + tail
    with live_server(create_app(catalog, body_idle_timeout_s=60, body_timeout_s=120)) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[: len(head) + 10])
            with ThreadPoolExecutor(8) as pool:
                def quick(i: int) -> int:
                    with httpx.Client(timeout=60) as client:
                        return client.post(url + "/api/search", data={"k": "3"},
                                           files={"image": ("q.png", png_bytes((i * 20, 90, 60)), "image/png")}
                                           ).status_code
                # Every other upload is answered while the slow one is still sending its photo.
                assert list(pool.map(quick, range(8))) == [200] * 8
            slow.sendall(body[len(head) + 10:])
            slow.settimeout(60)
            answer = b""
            while chunk := slow.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
