"""The milvus backend against a Milvus *server* (``uri=http://HOST:PORT``), the path past one machine.

The server is Milvus Lite's own gRPC server (``python -m milvus_lite server``), started by the fixture on
a free local port: it speaks the Milvus protocol that pymilvus speaks to a standalone server or a cluster,
so clothsim's code on this path runs for real. What only a server does: several processes use one index at
once, the data lives with the server (not in the index folder), and an index (even one held open) answers
again after the server restarts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the milvus extra (pymilvus) is not installed")
pytest.importorskip("milvus_lite", reason="the milvus extra (milvus-lite) is not installed")

import _ann_data as data  # noqa: E402
from _ann_data import ids_of  # noqa: E402
from _serve import index_catalog, ready_client, served_app  # noqa: E402
from helpers import until  # noqa: E402

from clothsim.features.store import FeatureStore  # noqa: E402
from clothsim.index import build_index, open_index  # noqa: E402
from clothsim.index.base import BackendIndexError, BackendUnavailable  # noqa: E402
from clothsim.index.registry import check_backends  # noqa: E402

DIM = 32
RECALL_FLOOR = 0.95  # as for Milvus Lite files (tests/test_index_milvus.py)
#: Longest wait for a client to reconnect to a restarted server.
RECOVERY_S = 30.0


class MilvusServer:
    """A ``milvus_lite server`` process over ``data_dir``, on a fixed port so that a restart keeps the URI."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        with socket.socket() as probe:  # a free port; start() checks that our process is the one on it
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        # Its output goes to files: a pipe nobody reads fills up with the tracebacks the server logs for
        # failed requests, and then the server blocks.
        self.log = self.data_dir.parent / f"milvus-server-{self.port}.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"milvus_lite server exited: {self.log.read_text()[-2000:]}")
                if self._listening():
                    return
                time.sleep(0.2)
            raise RuntimeError(f"milvus_lite server did not listen within 120 s: {self.log.read_text()[-2000:]}")
        except BaseException:
            self.stop()
            raise

    def _listening(self) -> bool:
        """Our process says it listens (not some other one on the port), and a gRPC channel is ready."""
        import grpc

        if f"listening on 127.0.0.1:{self.port}" not in self.log.read_text(errors="replace"):
            return False
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=2)
            except grpc.FutureTimeoutError:
                return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.process = None


@pytest.fixture()
def server(tmp_path):
    running = MilvusServer(tmp_path / "milvus-data")
    try:
        running.start()
        yield running
    finally:
        running.stop()


def test_an_index_on_a_server_is_shared_by_two_processes(tmp_path, server, opened):
    root = tmp_path / "s"
    store = data.make_store(root, n=1200, dim=DIM)
    index = build_index(store, "milvus", uri=server.uri, exact_below=0)
    opened.append(index)
    assert not index.local and index.uri == server.uri
    state = json.loads((root / "backends" / "milvus" / "state.json").read_text())
    assert state["uri"] == server.uri
    assert not (root / "backends" / "milvus" / "milvus.db").exists()  # the data lives with the server
    q = data.queries(30, DIM)
    assert data.recall(ids_of(index.search(q, 10)), data.exact_ids(store, q, 10)) >= RECALL_FLOOR
    index.delete(np.arange(0, 1200, 7))
    live = set(store.live_ids().tolist())
    hits = index.search(q, 10, category="dress")
    assert all(len(row) == 10 for row in hits)
    assert all(h.id in live and h.record.category == "dress" for row in hits for h in row)
    index.save()
    mine = ids_of(index.search(q[:5], 10))

    # A second process opens the same index while this one holds it open: no URI given (state.json
    # has it), and no lock refuses it, unlike a Milvus Lite file.
    np.save(tmp_path / "q.npy", q[:5])
    script = ("import json, sys\nimport numpy as np\nfrom clothsim.features.store import FeatureStore\n"
              "from clothsim.index import open_index\n"
              f"index = open_index(FeatureStore.open({str(root)!r}))\n"
              f"rows = index.search(np.load({str(tmp_path / 'q.npy')!r}), 10)\n"
              "print(json.dumps([index.count(), [[h.id for h in row] for row in rows]]))\nindex.close()\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    count, theirs = json.loads(out.stdout.strip().splitlines()[-1])
    assert count == len(store) and theirs == mine


def test_a_rebuild_switches_the_alias_and_drops_the_old_collection(tmp_path, server, opened):
    from pymilvus import MilvusClient

    root = tmp_path / "s"
    first = build_index(data.make_store(root, n=400, dim=DIM), "milvus", uri=server.uri, collection="shop")
    old = first.collection
    first.close()
    second = build_index(FeatureStore.open(root), "milvus", uri=server.uri, collection="shop")
    opened.append(second)
    client = MilvusClient(uri=server.uri)
    try:
        names = client.list_collections()
        assert second.collection in names and old not in names and second.collection != old
        assert client.describe_alias("shop")["collection_name"] == second.collection
    finally:
        client.close()


def test_the_index_survives_a_server_restart_and_a_dead_server_is_named(tmp_path, server, opened, caplog):
    root = tmp_path / "s"
    index = build_index(data.make_store(root, n=600, dim=DIM), "milvus", uri=server.uri, timeout=30)
    opened.append(index)  # stays open across the restart, as a running `clothsim serve` would
    q = data.queries(8, DIM)
    before = index.search(q, 5)

    server.stop()
    with pytest.raises(BackendUnavailable, match=f"Milvus at {server.uri} failed to search.*server running"):
        index.search(q, 5)
    with pytest.raises(BackendUnavailable, match=f"could not reach Milvus at {server.uri}") as down:
        open_index(FeatureStore.open(root), timeout=3)
    assert "rebuild" not in str(down.value)  # a server that is down is not a damaged index
    [check] = check_backends(FeatureStore.open(root))  # what `clothsim verify` reports: not checked, not damage
    assert not check.checked and check.ok and f"could not reach Milvus at {server.uri}" in check.note

    server.start()  # the same data folder and port; it comes back with the collection released
    caplog.set_level("WARNING")

    def answer():
        try:
            return index.search(q, 5)
        except BackendUnavailable:
            return None

    # The client's connection recovers on its own schedule: a request may still fail for a while.
    after = until(answer, RECOVERY_S)
    assert after is not None, f"the open index did not answer within {RECOVERY_S} s after the server came back"
    assert "was released (the server restarted?); loading it again" in caplog.text
    assert ids_of(after) == ids_of(before)
    again = open_index(FeatureStore.open(root))
    opened.append(again)
    reopened = again.search(q, 5)
    assert ids_of(reopened) == ids_of(before)
    np.testing.assert_allclose([[h.score for h in r] for r in reopened], [[h.score for h in r] for r in before],
                               rtol=1e-5)


def test_serve_answers_503_while_the_server_is_down_and_recovers(colour_catalog, tmp_path, server, monkeypatch):
    out = tmp_path / "idx"
    index_catalog(colour_catalog, out, "--backend", "milvus", "--backend-option", f"uri={server.uri}",
                  "--backend-option", "timeout=30")
    app, TestClient = served_app(out, monkeypatch)
    ask = {"id": "3", "k": "4"}  # unfiltered: a filter this narrow is answered by the store, not by Milvus
    try:
        with ready_client(app, TestClient) as client:
            first = client.post("/api/search", data=ask)
            assert first.status_code == 200 and len(first.json()["results"]) == 4
            server.stop()
            down = client.post("/api/search", data=ask)
            assert down.status_code == 503 and down.headers["Retry-After"] == "5"
            assert "cannot be reached" in down.json()["detail"]
            assert server.uri not in down.json()["detail"]  # the server's address is for the log only
            server.start()
            # As above: the connection may need a few more requests to recover.
            back = until(lambda: (answer := client.post("/api/search", data=ask)).status_code == 200 and answer,
                         RECOVERY_S)
            assert back, f"no search answered within {RECOVERY_S} s after the server came back"
            assert back.status_code == 200 and back.json()["results"] == first.json()["results"]
    finally:
        app.state.service.index.backend.close()


class _RpcFailure(Exception):
    """Stands for the grpc.RpcError that pymilvus lets through for a request that timed out."""

    def __init__(self, code) -> None:
        super().__init__(code)
        self._code = code

    def code(self):
        return self._code

    def details(self) -> str:
        return f"rpc {self._code.name}"


def test_what_counts_as_a_server_out_of_reach(tmp_path, server, opened):
    import grpc
    from pymilvus import MilvusException

    class RpcFailure(_RpcFailure, grpc.RpcError):
        pass

    index = build_index(data.make_store(tmp_path / "s", n=200, dim=DIM), "milvus", uri=server.uri)
    opened.append(index)

    def failing(error):
        def call(*args, **kwargs):
            raise error
        return call

    out_of_reach = [MilvusException(code=2, message="Fail connecting"), RpcFailure(grpc.StatusCode.UNAVAILABLE),
                    RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED),
                    MilvusException(code=5, message="service not ready", retriable=True)]
    for error in out_of_reach:
        with pytest.raises(BackendUnavailable, match="failed to search.*server running"):
            index._call("search", failing(error))
    refused = [MilvusException(code=1100, message="invalid parameter"), RpcFailure(grpc.StatusCode.INVALID_ARGUMENT)]
    for error in refused:  # the server answered and said no: an error about the index, not about reaching it
        with pytest.raises(BackendIndexError, match="failed to search") as caught:
            index._call("search", failing(error))
        assert not isinstance(caught.value, BackendUnavailable)
