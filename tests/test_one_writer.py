"""One writer per index folder, whatever the command: a second writer is refused at once, before any work.

The first writer is a real ``clothsim index`` process stopped (SIGSTOP, ``CLOTHSIM_FAULT_KIND=stop``) in
the middle of its work; the second runs meanwhile and must be refused without changing anything; the
first, continued, must then finish to exactly the result it would have given alone. Both orders: an
``--overwrite`` caught while it rebuilds beside the index, and a sync caught between two checkpoints.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork server and SIGSTOP semantics")

from test_crash_consistency import CTX, _cli, _csv, _image, _index, snapshot  # noqa: E402

from clothsim.data.records import CatalogRecord  # noqa: E402
from clothsim.encoders.base import l2_normalize  # noqa: E402
from clothsim.features.store import FeatureStore, StoreBusyError  # noqa: E402
from clothsim.features.writer_lock import WriterLock, hold_writer, lock_path  # noqa: E402
from clothsim.fileio import FAULT_AT_ENV, FAULT_KIND_ENV, FAULT_MATCH_ENV  # noqa: E402


@pytest.fixture()
def catalogue(tmp_path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(12):
        _image(images / f"{i:02d}.png", i)
        rows.append((str(images / f"{i:02d}.png"), "abc"[i % 3]))
    return _csv(tmp_path / "catalogue.csv", rows)


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` and its checksum: what "nothing was changed" compares."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "T"


def _start_stopped(argv: list[str], work: Path, match: str, at: int):
    """A ``clothsim`` child that stops itself at its ``at``-th durable step whose name contains ``match``."""
    import _fault_child

    env = {FAULT_AT_ENV: str(at), FAULT_KIND_ENV: "stop", FAULT_MATCH_ENV: match}
    process = CTX.Process(target=_fault_child.run_cli, args=(argv, env, str(work / "first.log")))
    process.start()
    deadline = time.monotonic() + 120
    while not _stopped(process.pid):
        assert process.is_alive(), (work / "first.log").read_text()
        assert time.monotonic() < deadline, "the first writer never reached its stop"
        time.sleep(0.05)
    return process


def _finish(process, work: Path) -> None:
    os.kill(process.pid, signal.SIGCONT)
    process.join(120)
    assert process.exitcode == 0, (work / "first.log").read_text()


def _reference(catalogue: Path, work: Path, *extra: str) -> dict:
    out = work / "reference"
    assert _cli(_index(catalogue, out, "test-thumb8", *extra), work)[0] == 0
    return snapshot(out)


@pytest.mark.parametrize("first, second", [(["--overwrite"], []), ([], ["--overwrite"])],
                         ids=["overwrite-then-sync", "sync-then-overwrite"])
def test_a_second_writer_is_refused_at_once_and_the_first_finishes_exactly(catalogue, tmp_path, first, second):
    work = tmp_path / "work"
    work.mkdir()
    target = tmp_path / "rx"
    # The index as it was (another encoder, so that --overwrite rebuilds it beside; a sync of it adds rows).
    assert _cli(_index(catalogue, target, "test-thumb4" if first else "test-thumb8"), work)[0] == 0
    if not first:  # a sync with work to do: the catalogue grew
        images = catalogue.parent / "images"
        for i in range(12, 20):
            _image(images / f"{i:02d}.png", i)
        _csv(catalogue, [(str(images / f"{i:02d}.png"), "abc"[i % 3]) for i in range(20)])
    reference = _reference(catalogue, work, *first) if first else None

    # The first writer stops after its second commit (inside rx.rebuild for --overwrite, rx for a sync).
    process = _start_stopped(_index(catalogue, target, "test-thumb8", *first), work, "rename manifest.json", 2)
    try:
        during = _tree(target)
        started = time.monotonic()
        code, log = _cli(_index(catalogue, target, "test-thumb8", *second), work)
        assert code == 1, log
        assert f"{target} is being written by another process" in log and "nothing was changed" in log
        assert "Traceback" not in log and "encoded now" not in log
        assert time.monotonic() - started < 60  # refused at once, not after waiting for the first
        assert _tree(target) == during
    finally:
        _finish(process, work)
    if reference is None:
        reference = _reference(catalogue, work)
    assert snapshot(target) == reference  # the first writer's result, untouched by the second
    assert not lock_path(target).exists()  # nothing left beside the index
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("rx")) == ["rx"]


def test_the_python_api_is_refused_while_a_command_holds_the_folder(tmp_path):
    store = FeatureStore.create(tmp_path / "s", {"encoder": "e", "weights": "w", "dim": 4, "preprocessing": None})
    vectors = l2_normalize(np.ones((1, 4)))
    with hold_writer(tmp_path / "s"):
        store.append(vectors, [CatalogRecord("a.jpg", "x")])  # the command's own store joins its lock
        other_thread_error = []

        def other_writer():
            try:
                FeatureStore.open(tmp_path / "s").append(vectors, [CatalogRecord("b.jpg", "x")])
            except StoreBusyError as exc:
                other_thread_error.append(exc)

        import threading

        thread = threading.Thread(target=other_writer)
        thread.start()
        thread.join()
        assert other_thread_error and "being written by another process" in str(other_thread_error[0])
    assert FeatureStore.open(tmp_path / "s").total_rows == 1
    assert not lock_path(tmp_path / "s").exists()


def test_a_lock_file_a_killed_writer_left_is_taken_over(tmp_path):
    (tmp_path / "s").mkdir()
    lock_path(tmp_path / "s").write_text("")  # what a kill -9 leaves: the file, but no lock on it
    with WriterLock(tmp_path / "s"):
        pass
    assert not lock_path(tmp_path / "s").exists()


def test_writers_in_two_processes_exclude_each_other(tmp_path):
    import _fault_child

    held, release = CTX.Event(), CTX.Event()
    process = CTX.Process(target=_fault_child.hold_writer_lock, args=(str(tmp_path / "s"), held, release))
    process.start()
    try:
        assert held.wait(60)
        with pytest.raises(StoreBusyError, match="being written by another process"):
            WriterLock(tmp_path / "s").acquire()
    finally:
        release.set()
        process.join(60)
    with WriterLock(tmp_path / "s"):
        pass



