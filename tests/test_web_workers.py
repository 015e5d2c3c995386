"""``clothsim serve --workers 2``: two processes over one index; a write answered by one is seen by the next search
on the other; /metrics adds both up.

The folder is only looked at every 60 s here, so what makes a write visible across processes is the check
each request makes, not the periodic look.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
pytest.importorskip("prometheus_client", reason="the web extra (prometheus-client) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from _live_server import free_port  # noqa: E402
from clothsim.cli.main import main  # noqa: E402
from clothsim.features.store import FeatureStore  # noqa: E402

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"
SRC = Path(__file__).resolve().parents[1] / "src"
KEY = "workers-test-key-0123456789abc"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _clients_on_each_worker(url: str) -> dict[int, httpx.Client]:
    """One kept-alive client per worker process: connections opened together, until both workers took one."""
    pinned: dict[int, httpx.Client] = {}
    spare: list[httpx.Client] = []
    deadline = time.monotonic() + 60
    while len(pinned) < 2:
        assert time.monotonic() < deadline, f"only worker(s) {sorted(pinned)} took connections"
        batch = [httpx.Client(base_url=url, timeout=60) for _ in range(16)]
        with ThreadPoolExecutor(len(batch)) as pool:
            pids = list(pool.map(lambda c: c.get("/health").json()["pid"], batch))
        for client, pid in zip(batch, pids):
            if pid not in pinned:
                pinned[pid] = client
            else:
                spare.append(client)
    for client in spare:
        client.close()
    return pinned


def test_two_workers_share_the_index_and_see_each_others_writes(tmp_path):
    catalog = tmp_path / "catalog"
    for category in ("hat", "shoes"):
        (catalog / category).mkdir(parents=True)
        for photo in sorted((SAMPLE / "train" / category).glob("*.jpg"))[:3]:
            shutil.copy(photo, catalog / category / photo.name)
    index = tmp_path / "index"
    assert main(["-q", "index", str(catalog), "--out", str(index)]) == 0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "clothsim.cli.main", "serve", "--index", str(index), "--port", str(port),
         "--workers", "2", "--writes", "--follow-seconds", "60"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115 - the child holds it
        env=dict(os.environ, PYTHONPATH=str(SRC), CLOTHSIM_API_KEY=KEY))
    clients: dict[int, httpx.Client] = {}
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        clients = _clients_on_each_worker(url)
        first, second = (clients[pid] for pid in sorted(clients))
        photo = next((SAMPLE / "test" / "skirt").glob("*.jpg")).read_bytes()

        added = first.post("/api/items", headers=AUTH, files={"image": ("s.jpg", photo)}, data={"category": "skirt"})
        assert added.status_code == 201, added.text
        new_id = added.json()["id"]
        # The other process answers with the new state at once: the id, the new category, the photo.
        assert second.post("/api/search", data={"id": str(new_id), "k": "2"}).status_code == 200
        found = second.post("/api/search", files={"image": ("q.jpg", photo)}, data={"k": "1", "category": "skirt"})
        assert found.status_code == 200 and [h["id"] for h in found.json()["results"]] == [new_id]

        assert second.delete(f"/api/items/{new_id}", headers=AUTH).status_code == 200
        assert first.post("/api/search", data={"id": str(new_id)}).status_code == 404
        again = first.post("/api/search", files={"image": ("q.jpg", photo)}, data={"k": "50"})
        assert new_id not in [h["id"] for h in again.json()["results"]]
        assert first.get(f"/api/items/{new_id}/image").status_code == 404

        # Both processes' requests are in the one scrape, whichever worker answers it.
        searches = {"route": "/api/search", "method": "POST", "status": "200"}
        text = first.get("/metrics").text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples[("clothsim_http_requests_total", tuple(sorted(searches.items())))] == 3
        assert samples[("clothsim_writes_total", (("kind", "add"),))] == 1
        assert samples[("clothsim_writes_total", (("kind", "delete"),))] == 1
        assert samples[("clothsim_ready", ())] == 1
    finally:
        for client in clients.values():
            client.close()
        server.terminate()
        server.wait(timeout=60)
    store = FeatureStore.open(index)
    assert store.verify(full=True).ok and len(store) == 6 and store.total_rows == 7
    assert server.returncode in (0, -15), log.read_text(errors="replace")[-3000:]
