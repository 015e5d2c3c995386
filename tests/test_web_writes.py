"""Writes over REST: off by default, behind an API key, committed through the store, searchable once answered."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import io
import os
import socket
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from _live_server import live_server  # noqa: E402
from clothsim.errors import UsageError  # noqa: E402
from clothsim.features.store import FeatureStore  # noqa: E402
from clothsim.similarity_index import SimilarityIndex  # noqa: E402
from clothsim.web.app import create_app  # noqa: E402
from clothsim.web.auth import ApiKey  # noqa: E402
from clothsim.web.writes import WriteSettings  # noqa: E402
from helpers import png_bytes, solid_image  # noqa: E402

KEY = "a-shop-back-office-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
GREEN = (30, 180, 40)


def _settings(tmp_path: Path, **extra) -> WriteSettings:
    return WriteSettings(ApiKey(KEY), tmp_path / "uploads", **extra)


@pytest.fixture()
def writable(catalog, tmp_path):
    app = create_app(catalog, writes=_settings(tmp_path, path_roots=(tmp_path / "shop",)))
    with TestClient(app) as client:
        yield client


def add(client, data: bytes | None = None, headers=AUTH, **fields):
    files = {"image": ("new.png", data, "image/png")} if data is not None else None
    return client.post("/api/items", files=files, data={k: str(v) for k, v in fields.items()}, headers=headers)


def live_store(catalog) -> FeatureStore:
    return FeatureStore.open(catalog.store.root)


# ----- who may write -------------------------------------------------------------------------------
def test_writes_are_off_unless_a_key_is_configured(catalog):
    with TestClient(create_app(catalog)) as client:
        assert add(client, png_bytes(GREEN), category="green").status_code in (404, 405)
        assert client.delete("/api/items/1", headers=AUTH).status_code in (404, 405)
        assert "/api/items" not in client.get("/openapi.json").json()["paths"]
    assert len(live_store(catalog)) == 24


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"Authorization": "Basic " + KEY}, 401),
    ({"Authorization": "Bearer"}, 401),
    ({"Authorization": "Bearer " + KEY[:-1]}, 403),
    ({"Authorization": "Bearer " + KEY + "x"}, 403),
    ({"Authorization": "Bearer wrong"}, 403),
])
def test_a_write_without_the_right_key_is_refused_and_changes_nothing(writable, catalog, headers, status):
    response = add(writable, png_bytes(GREEN), headers=headers, category="green")
    assert response.status_code == status
    assert (response.headers.get("www-authenticate") == 'Bearer realm="clothsim"') == (status == 401)
    assert KEY not in response.text
    assert writable.delete("/api/items/1", headers=headers).status_code == status
    assert len(live_store(catalog)) == 24


def test_a_write_without_the_key_is_refused_before_its_body_is_read(catalog, tmp_path):
    app = create_app(catalog, writes=_settings(tmp_path), body_idle_timeout_s=30, body_timeout_s=60)
    with live_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            # 10 MB announced, none sent: the answer cannot wait for the body.
            sock.sendall(b"POST /api/items HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 10000000\r\n\r\n")
            sock.settimeout(10)
            assert sock.recv(4096).startswith(b"HTTP/1.1 401")


def test_the_key_is_compared_in_constant_time(monkeypatch):
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    key = ApiKey(KEY)
    assert key.matches(KEY) and not key.matches("short") and not key.matches(KEY * 10)
    # Digests of equal size whatever was sent: neither the content nor the length of the key shows.
    assert compared == [(32, 32)] * 3


def test_a_short_or_missing_key_is_refused_at_start_up(monkeypatch):
    monkeypatch.delenv("CLOTHSIM_TEST_KEY", raising=False)
    with pytest.raises(UsageError, match="CLOTHSIM_TEST_KEY, which is not set"):
        ApiKey.from_env("CLOTHSIM_TEST_KEY")
    monkeypatch.setenv("CLOTHSIM_TEST_KEY", "short")
    with pytest.raises(UsageError, match="at least 16 characters") as info:
        ApiKey.from_env("CLOTHSIM_TEST_KEY")
    assert "short" not in str(info.value).replace("16 characters", "")
    monkeypatch.setenv("CLOTHSIM_TEST_KEY", KEY)
    assert ApiKey.from_env("CLOTHSIM_TEST_KEY").matches(KEY)
    assert KEY not in repr(ApiKey.from_env("CLOTHSIM_TEST_KEY"))


# ----- adding ------------------------------------------------------------------------------------------
def test_an_uploaded_item_is_committed_kept_and_found_at_once(writable, catalog, tmp_path):
    photo = png_bytes(GREEN, (40, 30), stripe=90)
    response = add(writable, photo, category="green", item_id="sku-1", attributes="cotton, striped", split="train")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["category"] == "green" and body["item_id"] == "sku-1" and body["attributes"] == ["cotton", "striped"]
    new_id = body["id"]
    assert new_id == 24  # ids are handed out in order, never reused
    # Searchable as soon as the answer came: by upload, by id, and it has an image.
    found = writable.post("/api/search", files={"image": ("q.png", photo, "image/png")}, data={"k": "1"}).json()
    assert [h["id"] for h in found["results"]] == [new_id]
    assert writable.post("/api/search", data={"id": str(new_id), "k": "3"}).status_code == 200
    assert writable.get(body["image_url"]).content == photo
    # Committed in the store, with the photo kept under its checksum in the upload folder.
    store = live_store(catalog)
    record = store.get(new_id).record
    assert record.category == "green" and record.item_id == "sku-1" and record.split == "train"
    assert Path(record.path) == tmp_path / "uploads" / hashlib.sha256(photo).hexdigest()[:2] / (
        hashlib.sha256(photo).hexdigest() + ".png")
    assert store.verify(full=True).ok
    np.testing.assert_allclose(store.vector(new_id), catalog.embed([photo])[0], atol=1e-6)


def test_an_item_named_by_path_must_be_under_an_allowed_folder(writable, catalog, tmp_path):
    shop = tmp_path / "shop"
    shop.mkdir()
    solid_image(GREEN).save(shop / "g.png")
    response = writable.post("/api/items", data={"path": str(shop / "g.png"), "category": "green"}, headers=AUTH)
    assert response.status_code == 201, response.text
    assert live_store(catalog).get(response.json()["id"]).record.path == str((shop / "g.png").resolve())
    outside = tmp_path / "secret.png"
    solid_image(GREEN).save(outside)
    (shop / "link.png").symlink_to(outside)
    for path in (str(outside), str(shop / "link.png"), str(shop / ".." / "secret.png"), "shop/g.png",
                 str(shop / "missing.png")):
        refused = writable.post("/api/items", data={"path": path, "category": "green"}, headers=AUTH)
        assert refused.status_code == 422 and "path" in refused.json()["detail"], (path, refused.text)
    assert len(live_store(catalog)) == 25


def test_an_item_named_by_url_is_fetched_only_under_an_allowed_prefix(catalog, tmp_path):
    photo = png_bytes(GREEN, (20, 20))
    fetched_outside: list[str] = []

    class Photos(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the standard library's name
            if self.path in ("/private/g.png", "/shop/../private/g.png", "/shop/%2e%2e/private/g.png"):
                fetched_outside.append(self.path)  # must never happen: the server may fetch under /shop/ only
            if self.path == "/shop/g.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(photo)))
                self.end_headers()
                self.wfile.write(photo)
            elif self.path == "/shop/moved.png":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/private/g.png")
                self.end_headers()
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *args):
            pass

    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Photos)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{origin.server_port}"
    try:
        app = create_app(catalog, writes=_settings(tmp_path, url_prefixes=(base + "/shop/",)))
        with TestClient(app) as client:
            response = client.post("/api/items", data={"url": base + "/shop/g.png", "category": "green"}, headers=AUTH)
            assert response.status_code == 201, response.text
            assert client.get(response.json()["image_url"]).content == photo
            for url, words in ((base + "/private/g.png", "prefix"), (base + "/shop/moved.png", "redirected"),
                               (base + "/shop/none.png", "404"), ("file:///etc/passwd", "prefix"),
                               # A path that leaves the prefix once the fetching side resolves it.
                               (base + "/shop/../private/g.png", "prefix"),
                               (base + "/shop/%2e%2e/private/g.png", "prefix"), (base + "/shop%2f..%2fprivate", "prefix"),
                               (base.replace("127.0.0.1", "127.0.0.1@localhost") + "/shop/g.png", "prefix"),
                               (base + "/shop/a b.png", "prefix"), (base + "/shop/g.png\r\nX: y", "prefix")):
                refused = client.post("/api/items", data={"url": url, "category": "green"}, headers=AUTH)
                assert refused.status_code == 422 and words in refused.json()["detail"], (url, refused.text)
    finally:
        origin.shutdown()
    assert len(live_store(catalog)) == 25 and fetched_outside == []


def test_url_prefixes_compare_scheme_host_port_and_path():
    from clothsim.web.writes import url_under_prefix

    allowed = ["http://cdn.example.com/shop/"]
    assert url_under_prefix("http://cdn.example.com/shop/a/b.jpg", allowed)
    assert url_under_prefix("http://CDN.example.com/shop/a.jpg?v=2", allowed)
    for url in ("https://cdn.example.com/shop/a.jpg", "http://cdn.example.com:8080/shop/a.jpg",
                "http://cdn.example.com.evil.test/shop/a.jpg", "http://cdn.example.com/shopping/a.jpg",
                "http://cdn.example.com/shop/./../a.jpg", "http://cdn.example.com/shop/%2E%2E/a.jpg",
                "http://cdn.example.com/shop/..%5ca.jpg", "http://x@cdn.example.com/shop/a.jpg", "", "shop/a.jpg"):
        assert not url_under_prefix(url, allowed), url


@pytest.mark.parametrize("fields, files, status, words", [
    ({}, {"image": ("a.png", png_bytes(GREEN), "image/png")}, 422, "category: required"),
    ({"category": "green", "split": "later"}, {"image": ("a.png", png_bytes(GREEN), "image/png")}, 422, "split"),
    ({"category": "a/b"}, {"image": ("a.png", png_bytes(GREEN), "image/png")}, 422, "category"),
    ({"category": "new\nline"}, {"image": ("a.png", png_bytes(GREEN), "image/png")}, 422, "category"),
    ({"category": ".."}, {"image": ("a.png", png_bytes(GREEN), "image/png")}, 422, "category"),
    ({"category": "green", "attributes": "a\x00b"}, {"image": ("a.png", png_bytes(GREEN), "image/png")}, 422,
     "attributes"),
    ({"category": "green", "path": "/tmp/a\x00.png"}, None, 422, "path"),
    ({"category": "green", "item_id": "x" * 500}, {"image": ("a.png", png_bytes(GREEN), "image/png")}, 422, "item_id"),
    ({"category": "green", "path": "/x.png"}, {"image": ("a.png", png_bytes(GREEN), "image/png")}, 422, "exactly one"),
    ({"category": "green"}, None, 422, "exactly one"),
    ({"category": "green"}, {"image": ("a.png", b"not an image", "image/png")}, 415, "not an image"),
])
def test_a_bad_write_is_refused_with_the_field_named_and_changes_nothing(writable, catalog, fields, files, status,
                                                                          words):
    response = writable.post("/api/items", data=fields, files=files, headers=AUTH)
    assert response.status_code == status and words in str(response.json()["detail"]), response.text
    assert len(live_store(catalog)) == 24


# ----- deleting ---------------------------------------------------------------------------------------------
def test_a_deleted_item_is_never_returned_once_the_delete_is_answered(writable, catalog):
    query = Path(catalog.store.get(3).record.path).read_bytes()
    before = writable.post("/api/search", files={"image": ("q.png", query, "image/png")}, data={"k": "5"}).json()
    assert before["results"][0]["id"] == 3
    response = writable.delete("/api/items/3", headers=AUTH)
    assert response.status_code == 200 and response.json()["deleted"] is True
    after = writable.post("/api/search", files={"image": ("q.png", query, "image/png")}, data={"k": "30"}).json()
    assert 3 not in [h["id"] for h in after["results"]] and len(after["results"]) == 23
    assert writable.post("/api/search", data={"id": "3"}).status_code == 404
    assert writable.get("/api/items/3/image").status_code == 404
    assert writable.delete("/api/items/3", headers=AUTH).status_code == 404  # already gone
    assert writable.delete("/api/items/999", headers=AUTH).status_code == 404
    assert 3 not in live_store(catalog).live_ids()


def test_concurrent_writes_are_each_applied_once(writable, catalog):
    photos = [png_bytes((i * 9 % 256, 100, 200 - i), (24, 24), stripe=i) for i in range(24)]
    deleted = list(range(0, 24, 3))
    with ThreadPoolExecutor(12) as pool:
        adds = pool.map(lambda i: add(writable, photos[i], category="blue", item_id=f"sku-{i}"), range(24))
        deletes = pool.map(lambda i: writable.delete(f"/api/items/{i}", headers=AUTH), deleted)
        added = [r.json()["id"] for r in adds if r.status_code == 201]
        assert [r.status_code for r in deletes] == [200] * len(deleted)
    assert len(added) == 24 and len(set(added)) == 24
    store = live_store(catalog)
    live = set(store.live_ids().tolist())
    assert live == (set(range(24)) - set(deleted)) | set(added)
    assert store.total_rows == 48  # each add committed once
    items = {it.id: it.record.item_id for it in store.items()}
    assert sorted(items[i] for i in added) == sorted(f"sku-{i}" for i in range(24))


# ----- one writer at a time --------------------------------------------------------------------------------
def test_a_write_waits_for_another_writer_of_the_folder_then_applies(catalog, tmp_path):
    app = create_app(catalog, writes=_settings(tmp_path))
    other = FeatureStore.open(catalog.store.root)  # e.g. a `clothsim index` in another process
    with TestClient(app) as client, ThreadPoolExecutor(1) as pool:
        with other.writer():
            pending = pool.submit(add, client, png_bytes(GREEN), category="green")
            time.sleep(0.5)
            assert not pending.done()  # waiting for the lock, not writing beside the other writer
            assert len(live_store(catalog)) == 24
        response = pending.result(timeout=60)
    assert response.status_code == 201, response.text
    assert len(live_store(catalog)) == 25


def test_a_write_that_waits_too_long_for_the_folder_is_503(catalog, tmp_path):
    app = create_app(catalog, writes=WriteSettings(ApiKey(KEY), tmp_path / "uploads", busy_timeout_s=0.3))
    with TestClient(app) as client, FeatureStore.open(catalog.store.root).writer():
        response = add(client, png_bytes(GREEN), category="green")
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert "another process" in response.json()["detail"]
    assert len(live_store(catalog)) == 24


def test_the_serve_command_reads_the_key_from_the_environment(catalog, monkeypatch):
    import uvicorn

    from clothsim.cli.main import main
    from clothsim.similarity_index import SimilarityIndex

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    monkeypatch.setattr(SimilarityIndex, "open", classmethod(lambda cls, *args, **kwargs: catalog))
    monkeypatch.delenv("CLOTHSIM_API_KEY", raising=False)
    assert main(["serve", "--index", str(catalog.store.root), "--writes"]) == 2  # no key: refused
    assert main(["serve", "--index", str(catalog.store.root), "--upload-dir", "x"]) == 2  # needs --writes
    monkeypatch.setenv("CLOTHSIM_API_KEY", KEY)
    assert main(["serve", "--index", str(catalog.store.root), "--writes", "--memory-budget-mb", "100000"]) == 0
    settings = apps[-1].state.service.write_settings
    assert settings.key.matches(KEY)
    assert settings.upload_dir == Path(str(catalog.store.root) + ".uploads").resolve()
    assert os.environ["CLOTHSIM_API_KEY"] == KEY


def test_writes_wait_while_a_clothsim_index_run_is_half_way(writable, catalog):
    store = FeatureStore.open(catalog.store.root)
    marker = {"first_build": False, "planned_rows": 30, "base_next_id": 24, "base_segments": len(store.segments)}
    store.commit(sync=marker)  # what an interrupted or running sync leaves in the manifest
    response = add(writable, png_bytes(GREEN), category="green")
    assert response.status_code == 503 and "clothsim index" in response.json()["detail"]
    assert FeatureStore.open(catalog.store.root, allow_unfinished=True).total_rows == 24
    store.commit(sync=None)  # the run finished
    assert add(writable, png_bytes(GREEN), category="green").status_code == 201


def test_a_photo_under_any_file_name_is_served_only_as_an_image(writable, tmp_path):
    shop = tmp_path / "shop"
    shop.mkdir()
    polyglot = io.BytesIO()
    solid_image(GREEN).save(polyglot, "GIF")
    (shop / "look.html").write_bytes(polyglot.getvalue() + b"<script>alert(document.domain)</script>")
    added = writable.post("/api/items", data={"path": str(shop / "look.html"), "category": "green"}, headers=AUTH)
    assert added.status_code == 201, added.text
    served = writable.get(added.json()["image_url"])
    # A page of this origin must never come out of a photo: no HTML type, no sniffing, no scripts.
    assert served.status_code == 200 and served.headers["content-type"] == "application/octet-stream"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in served.headers["content-security-policy"]
    photo = writable.get(f"/api/items/{added.json()['id'] - 1}/image")
    assert photo.headers["content-type"] == "image/png" and photo.headers["x-content-type-options"] == "nosniff"


def test_counts_follow_a_write_another_server_process_acknowledged(writable, catalog):
    # A second application over the same folder stands for another worker process: the counts it
    # reports follow the folder at each request, as its searches do, not at its next idle look.
    with TestClient(create_app(SimilarityIndex.open(catalog.store.root, encoder=catalog.encoder))) as other:
        assert other.get("/api/categories").json()["total"] == 24
        for expected in (25, 26, 27):
            assert add(writable, png_bytes(GREEN), category="green").status_code == 201
            assert other.get("/api/categories").json()["total"] == expected
            assert other.get("/health").json()["items"] == expected
