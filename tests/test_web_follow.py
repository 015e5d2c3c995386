"""A running ``clothsim serve`` follows its index folder: ``clothsim index`` syncs or rebuilds it underneath, and
new searches see the new state within seconds, with nothing wrong served in between.

The server is the real command in its own process (uvicorn on 127.0.0.1), the index the packaged sample
photos encoded by the shipped ONNX model; ``clothsim index`` runs in this process meanwhile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

from _live_server import free_port  # noqa: E402
from clothsim.cli.main import main  # noqa: E402
from clothsim.features.store import FeatureStore  # noqa: E402

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"
SRC = Path(__file__).resolve().parents[1] / "src"
PER_CATEGORY = 4


def _copy_category(catalog: Path, category: str) -> list[Path]:
    (catalog / category).mkdir(parents=True)
    photos = sorted((SAMPLE / "train" / category).glob("*.jpg"))[:PER_CATEGORY]
    return [Path(shutil.copy(p, catalog / category / p.name)) for p in photos]


def _live(index: Path) -> dict[int, str]:
    store = FeatureStore.open(index)
    return {item.id: item.record.path for item in store.items() if item.id in set(store.live_ids().tolist())}


class Server:
    """``clothsim serve`` in a child process, looking at its folder every 0.2 s."""

    def __init__(self, index: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(index.parent / "serve.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clothsim.cli.main", "serve", "--index", str(index), "--port", str(self.port),
             "--follow-seconds", "0.2", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(SRC)))
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, self.output()
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.2)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def _all_ids(client: httpx.Client, url: str, photo: bytes) -> set[int]:
    response = client.post(url + "/api/search", files={"image": ("q.jpg", photo)}, data={"k": "50"})
    assert response.status_code == 200, response.text
    return {hit["id"] for hit in response.json()["results"]}


def _wait_for_state(client: httpx.Client, url: str, photo: bytes, expected: set[int], seconds: float) -> float:
    started = time.monotonic()
    while _all_ids(client, url, photo) != expected:
        assert time.monotonic() - started < seconds, "the server did not follow the index"
        time.sleep(0.1)
    return time.monotonic() - started


def test_serve_follows_a_sync_and_a_rebuild_with_nothing_wrong_served_in_between(tmp_path):
    catalog, index = tmp_path / "catalog", tmp_path / "index"
    for category in ("hat", "shoes", "pants"):
        _copy_category(catalog, category)
    assert main(["-q", "index", str(catalog), "--out", str(index)]) == 0
    before = _live(index)
    query = next((SAMPLE / "test" / "hat").glob("*.jpg")).read_bytes()
    server = Server(index)
    seen: list[set[int]] = []
    problems: list[str] = []
    stop = threading.Event()

    def keep_searching() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                try:
                    seen.append(_all_ids(client, server.url, query))
                except AssertionError as exc:
                    problems.append(str(exc)[:300])

    checker = threading.Thread(target=keep_searching)
    checker.start()
    try:
        with httpx.Client(timeout=60) as client:
            assert _all_ids(client, server.url, query) == set(before)

            # A sync: two hats leave the catalogue, a new category arrives.
            removed_paths = sorted((catalog / "hat").glob("*.jpg"))[:2]
            for path in removed_paths:
                path.unlink()
            _copy_category(catalog, "skirt")
            assert main(["-q", "index", str(catalog), "--out", str(index)]) == 0
            after_sync = _live(index)
            removed = [i for i, p in before.items() if Path(p) in removed_paths]
            assert len(removed) == 2 and not set(removed) & set(after_sync)
            _wait_for_state(client, server.url, query, set(after_sync), 30)

            for item in removed:
                assert client.post(server.url + "/api/search", data={"id": str(item)}).status_code == 404
                assert client.get(f"{server.url}/api/items/{item}/image").status_code == 404
            skirts = {i for i, p in after_sync.items() if "/skirt/" in p}
            response = client.post(server.url + "/api/search", files={"image": ("q.jpg", query)},
                                   data={"k": "10", "category": "skirt"})
            assert response.status_code == 200, response.text
            assert {hit["id"] for hit in response.json()["results"]} == skirts
            new_item = min(skirts)
            response = client.post(server.url + "/api/search", data={"id": str(new_item), "k": "3"})
            assert response.status_code == 200 and response.json()["query"]["category"] == "skirt"
            assert client.get(f"{server.url}/api/items/{new_item}/image").status_code == 200

            # A rebuild: --overwrite builds beside the folder and swaps it in.
            assert main(["-q", "index", str(catalog), "--out", str(index), "--overwrite"]) == 0
            after_rebuild = _live(index)
            _wait_for_state(client, server.url, query, set(after_rebuild), 30)
            assert client.get(server.url + "/ready").json()["items"] == len(after_rebuild)
    finally:
        stop.set()
        checker.join(60)
        server.stop()
    assert not problems, problems[:3]
    # Every answer in between was one whole state of the index: never a mix, never a removed item after.
    states = [set(before), set(after_sync), set(after_rebuild)]
    assert seen and all(ids in states for ids in seen), [ids for ids in seen if ids not in states][:2]
    order = [states.index(ids) for ids in seen]
    assert order == sorted(order)  # once a newer state was served, an older one never came back


def test_a_request_during_a_local_commit_waits_for_it_rather_than_serve_an_older_state(catalog):
    """A write answered by another process, then a write of this one in progress: a search here must wait for
    this process's writer to publish (its fresh state holds the other's write), not serve the state before."""
    from clothsim.similarity_index import SimilarityIndex
    from clothsim.web.snapshot import IndexFollower, manifest_signature, warm_snapshot

    follower = IndexFollower(catalog, poll_s=0)
    FeatureStore.open(catalog.store.root).delete([5])  # answered by another worker process
    opened = threading.Event()

    def local_writer() -> None:
        with follower.local_commit():
            fresh = SimilarityIndex.open(catalog.store.root, encoder=catalog.encoder)
            warm_snapshot(fresh)
            opened.set()
            time.sleep(0.5)  # committing its own group
            follower.publish(fresh, manifest_signature(catalog.store.root))

    writer = threading.Thread(target=local_writer)
    writer.start()
    opened.wait(30)
    follower.check()  # what every request does first
    with follower.use() as snapshot:
        assert 5 not in snapshot.index.store.live_ids()
    writer.join(30)
