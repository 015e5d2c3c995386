"""Damage to an index backend's files is never served, and the command each message names repairs it.

Real photos (``../shared``), real engines (FAISS, Milvus Lite) and the real commands: bytes overwritten
inside a FAISS graph or a Milvus Lite file (same size: only a checksum can tell), files cut short or gone,
``backends/`` deleted; a graph whose save was lost after the store's commit; ``--overwrite`` and
``--reencode`` over an unchanged catalogue.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("faiss", reason="the faiss extra (faiss-cpu) is not installed")
import _tiny_encoders  # noqa: E402,F401  - registers test-thumb8

from clothsim.cli.main import main  # noqa: E402
from clothsim.features.store import FeatureStore  # noqa: E402
from clothsim.index import open_index  # noqa: E402
from clothsim.index import ann_search, ann_state  # noqa: E402
from clothsim.index.base import BackendIndexError  # noqa: E402

ENCODER = ["--encoder", "test-thumb8", "--runtime", "torch", "--workers", "0"]
CATEGORIES = ("dress", "shoes", "hat")


@pytest.fixture(scope="module")
def photos(clothing_dataset, tmp_path_factory) -> Path:
    """Five real photos in each of three categories."""
    root = tmp_path_factory.mktemp("photos") / "catalogue"
    for category in CATEGORIES:
        (root / category).mkdir(parents=True)
        for path in sorted((clothing_dataset / "train" / category).iterdir())[:5]:
            shutil.copy2(path, root / category / path.name)
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def index(capsys, photos: Path, out: Path, *extra: str) -> str:
    code, stdout, err = run(capsys, "-q", "index", str(photos), "--out", str(out), *ENCODER, *extra)
    assert code == 0, err
    return stdout


def search(capsys, photos: Path, out: Path) -> tuple[int, str, str]:
    query = sorted((photos / "dress").iterdir())[0]
    return run(capsys, "search", str(query), "--index", str(out), "--runtime", "torch", "--json")


def repair_command(message: str, photos: Path) -> list[str]:
    """The command a damage message names, with the catalogue filled in, as argv."""
    found = re.search(r"`clothsim (index [^`]+)`", message)
    assert found, f"no repair command in: {message}"
    return ["-q", *found.group(1).replace("DATA", str(photos)).split(), "--runtime", "torch", "--workers", "0",
            "--encoder", "test-thumb8"]


def assert_searches(capsys, photos: Path, out: Path) -> None:
    code, stdout, err = search(capsys, photos, out)
    assert code == 0, err
    hits = json.loads(stdout)[0]["results"]
    assert len(hits) == 5 and all(-1.0 <= h["score"] <= 1.0 for h in hits)
    assert run(capsys, "verify", str(out))[0] == 0


def _scribble(path: Path, seed: int = 0) -> None:
    """64 random bytes over the middle of a file; its size does not change."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = np.random.default_rng(seed).bytes(64)
    path.write_bytes(bytes(data))


def _faiss_file(out: Path, name: str = "faiss-hnsw") -> Path:
    state = json.loads((out / "backends" / name / "state.json").read_text())
    return out / "backends" / name / state["file"]


@pytest.mark.parametrize("damage", ["random bytes", "cut short", "backends deleted"])
@pytest.mark.parametrize("backend", ["faiss-hnsw", "faiss-ivfpq"])
def test_a_damaged_faiss_file_is_refused_and_the_named_command_repairs_it(capsys, photos, tmp_path, backend,
                                                                           damage):
    out = tmp_path / "index"
    index(capsys, photos, out, "--backend", backend)
    path = _faiss_file(out, backend)
    if damage == "random bytes":
        _scribble(path)
    elif damage == "cut short":
        path.write_bytes(path.read_bytes()[:-1000])
    else:
        shutil.rmtree(out / "backends")
    code, stdout, err = search(capsys, photos, out)
    assert code == 1 and not stdout, stdout  # no hit served
    assert "Traceback" not in err and ("checksum" in err or "truncated" in err or "missing" in err), err
    code, verified, _ = run(capsys, "verify", str(out))
    assert code == 1 and "DAMAGED backend" in verified
    # The command the message names repairs it (without encoding anything again), then search works.
    argv = repair_command(err, photos)
    assert "--overwrite" not in argv
    code, repaired, rerr = run(capsys, *argv)
    assert code == 0, rerr
    assert "already up to date" in repaired
    assert_searches(capsys, photos, out)


def test_a_graph_checked_in_the_background_is_refused_before_any_answer(capsys, photos, tmp_path, monkeypatch):
    out = tmp_path / "index"
    index(capsys, photos, out, "--backend", "faiss-hnsw")
    _scribble(_faiss_file(out))
    monkeypatch.setattr(ann_state, "CHECK_AT_OPEN_BYTES", 0)  # as a graph of gigabytes is: checked in a thread
    opened = open_index(FeatureStore.open(out))  # opening does not wait for the check
    with pytest.raises(BackendIndexError, match="checksum"):
        opened.search(np.ones((1, 192), np.float32) / np.sqrt(192), 3)
    code, stdout, err = search(capsys, photos, out)
    assert code == 1 and not stdout and "checksum" in err


def test_serve_refuses_a_damaged_graph_checked_in_the_background(capsys, photos, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    import uvicorn

    out = tmp_path / "index"
    index(capsys, photos, out, "--backend", "faiss-hnsw")
    _scribble(_faiss_file(out))
    monkeypatch.setattr(ann_state, "CHECK_AT_OPEN_BYTES", 0)
    answers = []

    def serve_until_the_warm_up_ends(app, **_):
        """What uvicorn does, in process: run the app's start-up, then take searches while it warms."""
        from fastapi.testclient import TestClient

        service = app.state.service
        stopped = threading.Event()
        service.on_startup_failure = stopped.set  # instead of the SIGTERM the real server sends itself
        with TestClient(app) as client:
            while not stopped.is_set() and not service.ready:
                answers.append(client.post("/api/search", data={"id": "0"}).status_code)
                time.sleep(0.01)
            answers.append(client.post("/api/search", data={"id": "0"}).status_code)

    monkeypatch.setattr(uvicorn, "run", serve_until_the_warm_up_ends)
    code, _, err = run(capsys, "serve", "--index", str(out), "--runtime", "torch")
    assert code == 1 and "checksum" in err and str(_faiss_file(out)) in err
    # Never a search answered from the damaged graph: only "not ready yet" until the server stops.
    assert answers and set(answers) == {503}


@pytest.mark.parametrize("backend", ["faiss-hnsw", "milvus"])
def test_impossible_or_disagreeing_engine_scores_are_refused_even_unchecked(capsys, photos, tmp_path, monkeypatch,
                                                                          backend):
    """The second line: were a damaged file's checksum not checked, its scores still never reach a user."""
    if backend == "milvus":
        pytest.importorskip("pymilvus")
    out = tmp_path / "index"
    index(capsys, photos, out, "--backend", backend)
    store = FeatureStore.open(out)
    opened = open_index(store)
    try:
        query = store.vector(0)[None, :]
        real = opened.search(query, 3)
        assert real[0][0].id == 0
        original = ann_search.finish_rows
        for fake, expected in ((1e24, "which no unit vector can give"), (0.25, "its vector in the store gives")):
            def damaged(ids, scores, *args, value=fake, **kwargs):
                scores = np.array(scores, dtype=np.float32, copy=True)
                scores[:, 0] = value  # what a damaged vector in the engine's file scores
                return original(ids, scores, *args, **kwargs)

            import clothsim.index.faiss_backend as fb
            import clothsim.index.milvus_backend as mb

            monkeypatch.setattr(fb if backend != "milvus" else mb, "finish_rows", damaged)
            with pytest.raises(BackendIndexError, match=expected):
                opened.search(query, 3)
            monkeypatch.undo()
    finally:
        close = getattr(opened, "close", None)
        if close:
            close()


def _milvus_files(out: Path, kind: str) -> list[Path]:
    db = out / "backends" / "milvus" / "milvus.db"
    return sorted(db.rglob("*.idx" if kind == "index" else "data/*.parquet"))


@pytest.mark.parametrize("kind", ["index", "data"])
def test_damage_inside_a_milvus_lite_file_is_refused_and_repaired(capsys, photos, tmp_path, kind):
    pytest.importorskip("pymilvus")
    out = tmp_path / "index"
    index(capsys, photos, out, "--backend", "milvus")
    [path] = _milvus_files(out, kind)
    _scribble(path)
    code, verified, _ = run(capsys, "verify", str(out))
    assert code == 1 and f"DAMAGED backend milvus: {path} does not match its checksum" in verified
    code, stdout, err = search(capsys, photos, out)
    assert code == 1 and not stdout and str(path) in err and "Traceback" not in err
    code, _, rerr = run(capsys, *repair_command(err, photos))
    assert code == 0, rerr
    assert_searches(capsys, photos, out)
    [truncated] = _milvus_files(out, kind)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    code, _, err = search(capsys, photos, out)
    assert code == 1 and "truncated" in err
    code, _, rerr = run(capsys, *repair_command(err, photos))
    assert code == 0, rerr
    assert_searches(capsys, photos, out)


def test_a_backend_save_lost_after_the_stores_commit_is_saved_by_the_next_run(capsys, photos, tmp_path, caplog):
    from test_crash_consistency import _cli

    catalogue = tmp_path / "catalogue"
    shutil.copytree(photos, catalogue)
    out = tmp_path / "index"
    index(capsys, catalogue, out, "--backend", "faiss-hnsw")
    for n, source in enumerate(sorted((photos / "hat").iterdir())[:3]):
        shutil.copy2(source, catalogue / "shoes" / f"new-{n}.jpg")
    argv = ["-q", "index", str(catalogue), "--out", str(out), *ENCODER, "--backend", "faiss-hnsw"]
    # Killed as the graph's new state is switched in, after the store's sync was committed.
    code, log = _cli(argv, tmp_path, fault_at=1, match="rename state.json")
    assert code == -9, log
    assert FeatureStore.open(out).total_rows == 18  # the store's sync was committed, the graph's was not
    caplog.set_level("WARNING")
    open_index(FeatureStore.open(out))
    assert "covers the store only up to id 15" in caplog.text
    stdout = index(capsys, catalogue, out, "--backend", "faiss-hnsw")
    assert "already up to date" in stdout
    caplog.clear()
    reopened = open_index(FeatureStore.open(out))
    assert "covers the store" not in caplog.text  # saved now: no open catches up in memory any more
    assert reopened.state["covered_next_id"] == 18


def _tombstoned_index(capsys, photos: Path, tmp_path: Path) -> tuple[Path, Path]:
    catalogue = tmp_path / "catalogue"
    shutil.copytree(photos, catalogue)
    out = tmp_path / "index"
    index(capsys, catalogue, out, "--backend", "faiss-hnsw")
    next(iter(sorted((catalogue / "hat").iterdir()))).unlink()
    assert "-1 removed" in index(capsys, catalogue, out, "--backend", "faiss-hnsw")
    assert len(FeatureStore.open(out).deleted_ids) == 1
    return catalogue, out


def test_overwrite_always_rebuilds_and_purges_tombstones(capsys, photos, tmp_path):
    catalogue, out = _tombstoned_index(capsys, photos, tmp_path)
    stdout = index(capsys, catalogue, out, "--backend", "faiss-hnsw", "--overwrite")
    assert "rebuilt:" in stdout and "14 encoded now" in stdout and "already up to date" not in stdout
    store = FeatureStore.open(out)
    assert store.total_rows == 14 and len(store.deleted_ids) == 0
    assert open_index(store).state["covered_next_id"] == 14
    assert_searches(capsys, catalogue, out)


def test_reencode_encodes_a_file_that_looks_unchanged(capsys, photos, tmp_path):
    catalogue = tmp_path / "catalogue"
    shutil.copytree(photos, catalogue)
    out = tmp_path / "index"
    index(capsys, catalogue, out)
    # A photo replaced by another of the very same size and modification time (a restore from a backup).
    path = sorted((catalogue / "dress").iterdir())[0]
    stat = path.stat()
    with Image.open(path) as img:
        flipped = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    data = bytearray(path.read_bytes())
    flipped_bytes = _same_size_jpeg(flipped, len(data))
    path.write_bytes(flipped_bytes)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    before = FeatureStore.open(out)
    old = before.vector(int([i for i, r in zip(before.live_ids(), before.records_for(before.live_ids()))
                             if r.path == str(path)][0]))
    assert "already up to date" in index(capsys, catalogue, out)  # size and mtime cannot tell
    stdout = index(capsys, catalogue, out, "--reencode")
    assert "15 encoded now" in stdout and "~15 re-encoded" in stdout
    after = FeatureStore.open(out)
    live = after.live_ids()
    new = after.vector(int([i for i, r in zip(live, after.records_for(live)) if r.path == str(path)][0]))
    assert len(after) == 15 and not np.allclose(new, old)
    assert "already up to date" in index(capsys, catalogue, out)


def _same_size_jpeg(image: Image.Image, size: int) -> bytes:
    """``image`` as a JPEG of exactly ``size`` bytes (the quality searched, then padded with a comment)."""
    import io

    for quality in range(95, 5, -5):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        data = buffer.getvalue()
        if len(data) <= size - 8:
            break
    pad = size - len(data) - 4
    comment = b"\xff\xfe" + (pad + 2).to_bytes(2, "big") + b"\x00" * pad
    return data[:2] + comment + data[2:]


@pytest.mark.parametrize("match", ["write-middle index-", "write-middle part-"])
def test_a_full_disk_while_faiss_writes_is_one_line_and_leaves_the_index(capsys, photos, tmp_path, monkeypatch,
                                                                         match):
    from clothsim import fileio

    out = tmp_path / "index"
    catalogue = tmp_path / "catalogue"
    shutil.copytree(photos, catalogue)
    index(capsys, catalogue, out, "--backend", "faiss-hnsw")
    before = json.loads((out / "backends" / "faiss-hnsw" / "state.json").read_text())
    shutil.copy2(sorted((photos / "hat").iterdir())[0], catalogue / "shoes" / "new.jpg")
    # The disk fills up inside FAISS's own write of the graph (or of a category graph).
    monkeypatch.setattr(fileio, "_fault_count", 0)
    monkeypatch.setenv(fileio.FAULT_AT_ENV, "1")
    monkeypatch.setenv(fileio.FAULT_KIND_ENV, "enospc")
    monkeypatch.setenv(fileio.FAULT_MATCH_ENV, match)
    code, _, err = run(capsys, "-q", "index", str(catalogue), "--out", str(out), *ENCODER, "--backend", "faiss-hnsw")
    assert code == 1 and "Traceback" not in err and "faiss::" not in err
    assert err.count("\n") == 1 and "No space left on device" in err and ".faiss" in err, err
    assert json.loads((out / "backends" / "faiss-hnsw" / "state.json").read_text()) == before
    monkeypatch.delenv(fileio.FAULT_AT_ENV)
    index(capsys, catalogue, out, "--backend", "faiss-hnsw")  # the same command again completes
    assert_searches(capsys, catalogue, out)


# ----- state.json: the commit record carries a checksum of its own --------------------------------------------
def _edit_state(out: Path, backend: str, key: str, change) -> Path:
    """Change the first ``"key": N`` in the backend's state.json text in place, as a flipped bit would."""
    path = out / "backends" / backend / "state.json"
    text = path.read_text()
    found = re.search(rf'"{key}": (\d+)', text)
    assert found, text
    path.write_text(text[:found.start(1)] + str(change(int(found.group(1)))) + text[found.end(1):])
    return path


@pytest.mark.parametrize("key, change", [("covered_next_id", lambda n: n - 10), ("ntotal", lambda n: n + 1)])
def test_a_changed_number_in_faiss_state_is_refused_and_the_named_command_repairs_it(capsys, photos, tmp_path,
                                                                                    key, change):
    out = tmp_path / "index"
    index(capsys, photos, out, "--backend", "faiss-hnsw")
    state = _edit_state(out, "faiss-hnsw", key, change)
    code, verified, _ = run(capsys, "verify", str(out))
    assert code == 1 and f"DAMAGED backend faiss-hnsw: {state} does not match its own checksum" in verified
    code, stdout, err = search(capsys, photos, out)
    assert code == 1 and not stdout and str(state) in err and "Traceback" not in err
    code, _, rerr = run(capsys, *repair_command(err, photos))
    assert code == 0, rerr
    assert_searches(capsys, photos, out)


def test_a_faiss_state_without_a_checksum_still_opens_and_verify_checks_its_count(capsys, photos, tmp_path):
    out = tmp_path / "index"
    index(capsys, photos, out, "--backend", "faiss-hnsw")
    path = out / "backends" / "faiss-hnsw" / "state.json"
    record = json.loads(path.read_text())
    assert ann_state.STATE_CHECKSUM in record
    older = {k: v for k, v in record.items() if k != ann_state.STATE_CHECKSUM}  # as written before checksums
    path.write_text(json.dumps(older))
    assert_searches(capsys, photos, out)
    path.write_text(json.dumps({**older, "ntotal": older["ntotal"] + 1}))
    code, verified, _ = run(capsys, "verify", str(out))
    assert code == 1 and f"holds {older['ntotal']} vectors" in verified


def test_a_changed_number_in_milvus_state_is_refused_not_caught_up(capsys, photos, tmp_path):
    pytest.importorskip("pymilvus")
    out = tmp_path / "index"
    index(capsys, photos, out, "--backend", "milvus")
    state = _edit_state(out, "milvus", "covered_next_id", lambda n: n - 10)
    damaged = state.read_bytes()
    code, verified, _ = run(capsys, "verify", str(out))
    assert code == 1 and f"DAMAGED backend milvus: {state} does not match its own checksum" in verified
    code, stdout, err = search(capsys, photos, out)
    assert code == 1 and not stdout and str(state) in err and "Traceback" not in err
    assert state.read_bytes() == damaged  # a search never rewrites the record
    code, _, rerr = run(capsys, *repair_command(err, photos))
    assert code == 0, rerr
    assert_searches(capsys, photos, out)
    record = json.loads(state.read_text())
    state.write_text(json.dumps({k: v for k, v in record.items() if k != ann_state.STATE_CHECKSUM}))
    assert_searches(capsys, photos, out)  # a record written before checksums still opens
