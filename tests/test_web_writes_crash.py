"""kill -9 during a REST add: every add that was answered is in the store, the one in flight is whole or absent,
and the folder opens, verifies and serves again.

The server is the real ``clothsim serve --writes`` in its own process, killed by ``clothsim.fileio``'s fault
hook at a chosen durable step of its own writes (SIGKILL, as ``kill -9``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

from _live_server import free_port  # noqa: E402
from clothsim.cli.main import main  # noqa: E402
from clothsim.features.store import FeatureStore  # noqa: E402
from clothsim.fileio import FAULT_AT_ENV, FAULT_MATCH_ENV  # noqa: E402

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"
SRC = Path(__file__).resolve().parents[1] / "src"
KEY = "crash-test-key-0123456789abcdef"


def _serve(index: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clothsim.cli.main", "serve", "--index", str(index), "--port", str(port), "--writes"],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115 - the child holds it
        env=dict(os.environ, PYTHONPATH=str(SRC), CLOTHSIM_API_KEY=KEY, **env))


def _wait_ready(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)


@pytest.fixture(scope="module")
def built_index(tmp_path_factory) -> Path:
    """Three photos each of two categories, indexed by `clothsim index` with the shipped ONNX model."""
    root = tmp_path_factory.mktemp("crash")
    for category in ("hat", "shoes"):
        (root / "catalog" / category).mkdir(parents=True)
        for photo in sorted((SAMPLE / "train" / category).glob("*.jpg"))[:3]:
            shutil.copy(photo, root / "catalog" / category / photo.name)
    assert main(["-q", "index", str(root / "catalog"), "--out", str(root / "index")]) == 0
    return root / "index"


@pytest.mark.parametrize("step, at", [
    ("rename manifest.json", 3),  # the third commit: after its files are written, before the switch
    ("write-middle", 4),          # inside the fourth data file written: a half-written segment file
])
def test_a_kill_during_a_rest_add_loses_nothing_that_was_answered(built_index, tmp_path, step, at):
    index = tmp_path / "index"
    shutil.copytree(built_index, index)
    before = FeatureStore.open(index)
    original = set(before.live_ids().tolist())
    photos = sorted(SAMPLE.glob("test/*/*.jpg"))[:12]
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    server = _serve(index, port, {FAULT_AT_ENV: str(at), FAULT_MATCH_ENV: step}, log)
    answered: dict[int, str] = {}
    try:
        _wait_ready(server, url, log)
        with httpx.Client(timeout=60) as client:
            for n, photo in enumerate(photos):
                try:
                    response = client.post(url + "/api/items", headers={"Authorization": f"Bearer {KEY}"},
                                           files={"image": (photo.name, photo.read_bytes())},
                                           data={"category": photo.parent.name, "item_id": f"sku-{n}"})
                except httpx.TransportError:
                    break  # killed while this add was in flight
                assert response.status_code == 201, response.text
                answered[response.json()["id"]] = f"sku-{n}"
        assert server.wait(timeout=30) == -9, "the fault hook did not kill the server"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    in_flight = f"sku-{len(answered)}"
    assert answered and len(answered) < len(photos)

    # The folder is whole: it opens and every checksum holds; leftovers of the killed write are cleaned up by
    # the next writer, never read.
    store = FeatureStore.open(index)
    assert store.verify(full=True).ok
    items = {it.id: it.record for it in store.items()}
    live = set(store.live_ids().tolist())
    # Every answered add is there, once, with its own record and kept photo.
    for item_id, sku in answered.items():
        assert item_id in live and items[item_id].item_id == sku
        assert Path(items[item_id].path).is_file()
    skus = [items[i].item_id for i in live - original]
    assert sorted(skus) == sorted(set(skus))  # nothing doubled
    # The add in flight is either wholly there or absent; nothing else appeared.
    assert set(skus) - set(answered.values()) <= {in_flight}
    assert live >= original

    # The same command serves the folder again and takes writes.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    again = _serve(index, port, {}, log)
    try:
        _wait_ready(again, url, log)
        with httpx.Client(timeout=60) as client:
            for item_id in answered:
                assert client.post(url + "/api/search", data={"id": str(item_id), "k": "1"}).status_code == 200
            photo = photos[-1]
            response = client.post(url + "/api/items", headers={"Authorization": f"Bearer {KEY}"},
                                   files={"image": (photo.name, photo.read_bytes())}, data={"category": "hat"})
            assert response.status_code == 201, response.text
    finally:
        again.terminate()
        again.wait(timeout=30)
    assert FeatureStore.open(index).verify(full=True).ok
