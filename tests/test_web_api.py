"""The REST API and page routes of clothsim.web, driven through FastAPI's TestClient."""

from __future__ import annotations

import asyncio
import io
import os
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
pytest.importorskip("multipart", reason="python-multipart is not installed")

with warnings.catch_warnings():
    # Recent Starlette prefers httpx2 for its test client; httpx works the same for these tests.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from clothsim.similarity_index import SimilarityIndex
from clothsim.cli.main import main
from clothsim.web.app import MULTIPART_OVERHEAD_BYTES, create_app
from clothsim.web.limits import BodySizeLimitMiddleware
from clothsim.web.service import SearchService
from helpers import png_bytes

MAX_UPLOAD = 50_000
MAX_PIXELS = 250_000
MAX_K = 20


@pytest.fixture()
def client(catalog) -> TestClient:
    app = create_app(catalog, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, max_k=MAX_K)
    with TestClient(app) as test_client:
        yield test_client


def upload(client: TestClient, data: bytes, name: str = "query.png", **fields):
    return client.post("/api/search", files={"image": (name, data, "image/png")},
                       data={key: str(value) for key, value in fields.items()})


def ids_of(item_category: str, catalog: SimilarityIndex) -> set[int]:
    return {it.id for it in catalog.store.items() if it.record.category == item_category}


# ----- read-only routes --------------------------------------------------------------------------
def test_health_reports_index_and_limits(client):
    body = client.get("/health").json()
    assert body.pop("pid") == os.getpid()
    assert body == {"status": "ok", "ready": True, "items": 24, "categories": 3, "encoder": "tiny-colour", "dim": 192,
                    "max_k": MAX_K, "max_upload_bytes": MAX_UPLOAD, "max_pixels": MAX_PIXELS, "text_search": False}


def test_categories_lists_every_category_with_counts(client):
    body = client.get("/api/categories").json()
    assert body["total"] == 24
    assert body["categories"] == [{"name": c, "count": 8} for c in ("blue", "green", "red")]


def test_page_and_its_assets_are_served_by_the_app(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        assert asset in page.text
        response = client.get(asset)
        assert response.status_code == 200 and kind in response.headers["content-type"]
    # Nothing the page needs comes from another host (no CDN).
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
        assert not re.search(r"""url\(\s*["']?(https?:)?//""", text)
        assert not re.search(r"""(fetch|import)\(\s*["'](https?:)?//""", text)


def test_openapi_describes_every_route_and_the_search_form(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/search", "/api/categories", "/api/items/{item_id}/image", "/health"} <= set(spec["paths"])
    body = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    ref = body["$ref"].split("/")[-1]
    assert {"image", "id", "k", "category"} <= set(spec["components"]["schemas"][ref]["properties"])


# ----- search ---------------------------------------------------------------------------------
def test_upload_search_returns_the_most_similar_items(client, catalog):
    data = png_bytes((205, 35, 34), stripe=40)
    response = upload(client, data, k=8)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == {"kind": "upload", "filename": "query.png", "size_bytes": len(data), "width": 32,
                             "height": 24, "id": None, "category": None, "image_url": None, "text": None}
    assert body["k"] == 8 and body["category"] is None
    results = body["results"]
    assert [r["rank"] for r in results] == list(range(1, 9))
    assert {r["category"] for r in results} == {"red"}
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and scores[0] <= 1.0 + 1e-6
    expected = catalog.search(data, k=8)
    assert [r["id"] for r in results] == [h.id for h in expected]
    assert all(r["image_url"] == f"/api/items/{r['id']}/image" for r in results)
    assert all("/" not in r["name"] for r in results)  # server folders are not disclosed


def test_upload_search_honours_the_category_filter_and_k(client, catalog):
    body = upload(client, png_bytes((205, 35, 34)), k=3, category="blue").json()
    assert body["category"] == "blue"
    assert len(body["results"]) == 3
    assert {r["id"] for r in body["results"]} <= ids_of("blue", catalog)


def test_an_empty_category_field_means_every_category(client):
    body = upload(client, png_bytes((30, 180, 40)), k=4, category="").json()
    assert body["category"] is None and {r["category"] for r in body["results"]} == {"green"}


def test_search_by_id_leaves_the_item_out_and_matches_the_python_api(client, catalog):
    green = sorted(ids_of("green", catalog))[2]
    response = client.post("/api/search", data={"id": str(green), "k": "5"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["kind"] == "item" and body["query"]["id"] == green
    assert body["query"]["category"] == "green"
    assert body["query"]["image_url"] == f"/api/items/{green}/image"
    assert green not in [r["id"] for r in body["results"]]
    assert [r["id"] for r in body["results"]] == [h.id for h in catalog.search_by_id(green, k=5)]


def test_k_above_the_catalogue_size_returns_what_there_is(client):
    body = upload(client, png_bytes((20, 40, 210)), k=MAX_K, category="blue").json()
    assert len(body["results"]) == 8


# ----- item images ----------------------------------------------------------------------------
def test_item_image_serves_the_indexed_file(client, catalog):
    item = catalog.store.items()[5]
    response = client.get(f"/api/items/{item.id}/image")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == Path(item.record.path).read_bytes()


@pytest.mark.parametrize("item", ["24", "-1", "999999999999999999999"])
def test_item_image_of_an_unknown_id_is_404(client, item):
    response = client.get(f"/api/items/{item}/image")
    assert response.status_code == 404
    assert "no item" in response.json()["detail"]


@pytest.mark.parametrize("item", ["abc", "..%2F..%2Fetc%2Fpasswd", "1.5"])
def test_item_image_never_takes_a_path_from_the_request(client, item):
    response = client.get(f"/api/items/{item}/image")
    assert response.status_code in (404, 422)
    assert not response.headers["content-type"].startswith("image/")


def test_item_image_whose_file_was_removed_is_404(client, catalog):
    item = catalog.store.items()[0]
    Path(item.record.path).unlink()
    response = client.get(f"/api/items/{item.id}/image")
    assert response.status_code == 404 and "no longer on disk" in response.json()["detail"]


# ----- bad input ------------------------------------------------------------------------------
def test_an_upload_over_the_limit_declared_by_content_length_is_413(client):
    response = upload(client, b"\x89PNG" + b"0" * (MAX_UPLOAD + MULTIPART_OVERHEAD_BYTES))
    assert response.status_code == 413
    assert "larger than the limit" in response.json()["detail"]


def test_a_file_just_over_the_limit_inside_the_framing_allowance_is_413(client):
    response = upload(client, b"\x89PNG" + b"0" * MAX_UPLOAD)
    assert response.status_code == 413
    assert f"the limit is {MAX_UPLOAD}" in response.json()["detail"]


def test_a_body_without_content_length_is_counted_while_read(client):
    boundary = "clothsimboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def chunks():
        yield head
        for _ in range((MAX_UPLOAD + MULTIPART_OVERHEAD_BYTES) // 8192 + 2):
            yield b"0" * 8192

    response = client.post("/api/search", content=chunks(),
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413


def _run_asgi(app, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, list[dict]]:
    """Call an ASGI app once with a hand-made request; returns the status and the messages sent."""
    scope = {"type": "http", "method": "POST", "path": "/api/search", "headers": headers}
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive():
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    return starts[0]["status"], sent


def test_the_limit_holds_when_content_length_lies():
    seen = {"bytes": 0, "disconnected": False}

    async def reader(scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                seen["disconnected"] = True
                break
            seen["bytes"] += len(message["body"])
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = BodySizeLimitMiddleware(reader, max_body_bytes=1000)
    status, sent = _run_asgi(app, [(b"content-length", b"100")], [b"x" * 600] * 4)
    assert status == 413
    assert seen["disconnected"] and seen["bytes"] <= 1000
    assert b"ok" not in b"".join(m.get("body", b"") for m in sent)  # the app's own reply was dropped


def test_a_declared_oversize_body_is_refused_before_the_app_runs():
    called = []

    async def app_(scope, receive, send):
        called.append(scope)

    status, _ = _run_asgi(BodySizeLimitMiddleware(app_, max_body_bytes=10), [(b"content-length", b"11")], [b""])
    assert status == 413 and not called


@pytest.mark.parametrize("data, reason", [
    (b"this is plain text, not a photo", "not an image"),
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),
    # PostScript, which Pillow would hand to Ghostscript: photos are read in picture formats only.
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n", "not an image"),
])
def test_a_file_that_is_not_an_image_is_415(client, data, reason):
    response = upload(client, data, name="notes.png")
    assert response.status_code == 415
    assert reason in response.json()["detail"]


def test_postscript_is_never_handed_to_an_outside_program(client, monkeypatch):
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: pytest.fail("Ghostscript was called"))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)  # as on a host that has it
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n"
    response = upload(client, eps, name="look.eps")
    assert response.status_code == 415 and "Ghostscript" not in response.text


def test_a_truncated_image_is_415(client, awkward_images):
    response = upload(client, awkward_images["truncated"].read_bytes(), name="truncated.jpg")
    assert response.status_code == 415
    assert "not an image" in response.json()["detail"]


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(client):
    buf = io.BytesIO()
    Image.new("1", (1000, 1000), 0).save(buf, "PNG")  # one million pixels in a few hundred bytes
    assert len(buf.getvalue()) < MAX_UPLOAD
    response = upload(client, buf.getvalue(), name="bomb.png")
    assert response.status_code == 413
    assert "1000x1000" in response.json()["detail"] and str(MAX_PIXELS) in response.json()["detail"]


def test_an_81_megapixel_bomb_is_refused_under_the_default_limit(catalog, awkward_images):
    with TestClient(create_app(catalog)) as default_client:
        response = upload(default_client, awkward_images["huge"].read_bytes(), name="huge.png")
    assert response.status_code == 413


@pytest.mark.parametrize("fields, message", [
    ({"k": "5"}, "got neither"),
    ({}, "got neither"),
])
def test_neither_image_nor_id_is_422(client, fields, message):
    response = client.post("/api/search", data=fields)
    assert response.status_code == 422 and message in response.json()["detail"]


def test_both_image_and_id_is_422(client):
    response = upload(client, png_bytes((1, 2, 3)), id=0)
    assert response.status_code == 422 and "got both" in response.json()["detail"]


def test_a_json_body_is_422_not_500(client):
    response = client.post("/api/search", json={"id": 1})
    assert response.status_code == 422


def test_a_text_field_named_image_is_422(client):
    response = client.post("/api/search", data={"image": "not a file"})
    assert response.status_code == 422


@pytest.mark.parametrize("fields", [{"id": "seven"}, {"id": "1", "k": "many"}, {"id": "1", "k": "0"},
                                    {"id": "1", "k": str(MAX_K + 1)}, {"id": "1", "k": "-3"}])
def test_malformed_or_out_of_range_fields_are_422(client, fields):
    response = client.post("/api/search", data=fields)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)  # FastAPI's field-by-field validation report


def test_an_unknown_category_is_422_and_names_the_known_ones(client):
    response = client.post("/api/search", data={"id": "1", "category": "hats"})
    assert response.status_code == 422
    assert "hats" in response.json()["detail"] and "'red'" in response.json()["detail"]


@pytest.mark.parametrize("item", ["24", "-1", "99999999999999999999"])
def test_searching_from_an_unknown_id_is_404(client, item):
    response = client.post("/api/search", data={"id": item})
    assert response.status_code == 404


# ----- start-up and concurrency ----------------------------------------------------------------
def test_start_up_loads_once_and_fills_the_store_caches(catalog, tiny_encoder):
    store = catalog.store
    store._reset_caches()  # as a freshly opened store has them
    before = tiny_encoder.calls
    create_app(catalog)
    assert tiny_encoder.calls == before + 1  # one warm-up batch
    # The lazily built caches are filled before any request thread can race to build them.
    assert store._table is not None and store._codes is not None and store._live is not None
    assert store._all_ids is not None and store._deleted is not None


def test_concurrent_requests_give_the_same_answers_as_sequential_ones(client, catalog):
    rng = np.random.default_rng(0)
    colours = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(12)]
    jobs = [("upload", png_bytes(c, stripe=int(rng.integers(0, 200)))) for c in colours]
    jobs += [("id", int(i)) for i in rng.choice(24, 12, replace=False)]

    def run(job):
        kind, value = job
        if kind == "upload":
            response = upload(client, value, k=6)
        else:
            response = client.post("/api/search", data={"id": str(value), "k": "6"})
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["results"]]

    expected = [[h.id for h in (catalog.search(v, k=6) if kind == "upload" else catalog.search_by_id(v, k=6))]
                for kind, v in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(run, jobs * 2))
    assert got == expected * 2


def test_the_encoder_never_runs_two_batches_at_once(catalog, tiny_encoder):
    state = {"active": 0, "most": 0}
    guard = threading.Lock()
    original = tiny_encoder.embed

    def slow_embed(batch):
        with guard:
            state["active"] += 1
            state["most"] = max(state["most"], state["active"])
        time.sleep(0.01)  # widen the window in which an unguarded second call would overlap
        try:
            return original(batch)
        finally:
            with guard:
                state["active"] -= 1

    tiny_encoder.embed = slow_embed
    with TestClient(create_app(catalog)) as test_client, ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda i: upload(test_client, png_bytes((i * 10, 50, 90))).status_code,
                                 range(18)))
    assert statuses == [200] * 18
    assert state["most"] == 1


# ----- construction and the command line ------------------------------------------------------
@pytest.mark.parametrize("option", ["max_upload_bytes", "max_pixels", "max_k", "decode_slots"])
def test_limits_below_one_are_refused(catalog, option):
    limits = {"max_upload_bytes": 10, "max_pixels": 10, "max_k": 10, option: 0}
    with pytest.raises(ValueError, match=option):
        SearchService(catalog, **limits)


def test_serve_command_binds_to_loopback_by_default(catalog, monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    monkeypatch.setattr(SimilarityIndex, "open", classmethod(lambda cls, *args, **kwargs: catalog))
    # The budget is checked against this whole test process's memory: give it room.
    assert main(["serve", "--index", "unused", "--max-k", "7", "--memory-budget-mb", "100000"]) == 0
    (app, kwargs), = calls
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8000
    assert app.state.service.max_k == 7
    assert "http://127.0.0.1:8000/" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--port", "70000"], ["--max-upload-mb", "0"]])
def test_serve_command_refuses_bad_options(catalog, monkeypatch, argv):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: pytest.fail("must not start"))
    monkeypatch.setattr(SimilarityIndex, "open", classmethod(lambda cls, *args, **kwargs: catalog))
    assert main(["serve", "--index", "unused", *argv]) == 2


# ----- liveness and readiness -------------------------------------------------------------------
def test_ready_is_503_while_warming_up_then_200(catalog, tiny_encoder):
    release = threading.Event()
    original = tiny_encoder.embed

    def held_embed(batch):
        release.wait(60)  # the warm-up's first encoder run waits for the test
        return original(batch)

    tiny_encoder.embed = held_embed
    with TestClient(create_app(catalog, warm_in_background=True)) as test_client:
        health = test_client.get("/health")
        assert health.status_code == 200 and health.json()["ready"] is False  # alive, not ready
        response = test_client.get("/ready")
        assert response.status_code == 503 and response.json() == {"ready": False, "detail": "warming up",
                                                                  "items": None, "generation": None}
        for searched in (test_client.post("/api/search", data={"id": "1"}),
                         upload(test_client, png_bytes((200, 30, 30)))):
            assert searched.status_code == 503 and searched.headers["retry-after"] == "2"
        release.set()
        deadline = time.monotonic() + 60
        while (response := test_client.get("/ready")).status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.05)
        assert response.json()["ready"] is True and response.json()["items"] == 24
        assert test_client.post("/api/search", data={"id": "1"}).status_code == 200


def test_ready_says_why_when_the_warm_up_fails(catalog, tiny_encoder):
    def broken_embed(batch):
        raise MemoryError("the encoder could not allocate its buffers")

    tiny_encoder.embed = broken_embed
    app = create_app(catalog, warm_in_background=True)
    with TestClient(app) as test_client:
        deadline = time.monotonic() + 60
        while app.state.service.startup_error is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        response = test_client.get("/ready")
        assert response.status_code == 503 and response.json()["detail"] == "the index failed to load"
