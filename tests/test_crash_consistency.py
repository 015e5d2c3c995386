"""Crash consistency, proven by fault injection: a kill -9 or a full disk at every durable step in turn.

Each scenario runs the real command once without faults to count its durable steps (``clothsim.fileio``
traces them) and to get the reference result. Then, for every step N, a fresh child process runs the same
command and is killed with SIGKILL (or gets ENOSPC) at step N. What it leaves must be the previous state,
or a state readers refuse or flag as unfinished and never a mix with garbage; running the same command
again (without faults) must end in exactly the reference store, row for row, with no file left behind.
"""

from __future__ import annotations

import csv
import hashlib
import multiprocessing
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork server and SIGKILL semantics")

TESTS = Path(__file__).resolve().parent
# The fork server imports the child module once (torch and clothsim included), so each faulty run is a
# fork, not a fresh interpreter. Python 3.11's fork server ignores the parent's sys.path (where pytest put
# tests/), hence PYTHONPATH.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
CTX = multiprocessing.get_context("forkserver")
CTX.set_forkserver_preload(["_fault_child"])

from clothsim.features.store import FeatureStore, StoreIntegrityError, UnfinishedStoreError  # noqa: E402
from clothsim.fileio import FAULT_AT_ENV, FAULT_KIND_ENV, FAULT_MATCH_ENV, FAULT_TRACE_ENV  # noqa: E402

INDEX_ARGS = ["--runtime", "torch", "--workers", "0", "--checkpoint-every", "5"]
# Where a full disk fails: the writes of data, not renames or deletions.
ENOSPC_STEPS = ("write ", "write-middle ")


@pytest.fixture(scope="module")
def scratch():
    """A folder in memory where there is one (fsync is then free), else in the temporary folder."""
    import tempfile

    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="clothsim-crash-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def work(scratch, request):
    path = scratch / request.node.name
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ----- running children ----------------------------------------------------------------------------------
def _child(target: str, args: tuple, work: Path, fault_at: int | None = None, kind: str = "kill",
           trace: Path | None = None, match: str | None = None) -> tuple[int, str]:
    import _fault_child

    env = {}
    if fault_at is not None:
        env.update({FAULT_AT_ENV: str(fault_at), FAULT_KIND_ENV: kind})
    if match is not None:  # count only the steps whose name holds it (the child's environment, not ours)
        env[FAULT_MATCH_ENV] = match
    if trace is not None:
        env[FAULT_TRACE_ENV] = str(trace)
    log = work / "child.log"
    process = CTX.Process(target=getattr(_fault_child, target), args=(*args, env, str(log)))
    process.start()
    process.join(120)
    if process.is_alive():
        process.kill()
        pytest.fail(f"child {args} hung")
    return process.exitcode, log.read_text(errors="replace") if log.exists() else ""


def _cli(argv: list[str], work: Path, **fault) -> tuple[int, str]:
    return _child("run_cli", (argv,), work, **fault)


def _steps(target: str, args: tuple, work: Path) -> list[str]:
    """The names of the durable steps the operation takes, in order (step N is entry N - 1)."""
    trace = work / "trace.txt"
    trace.unlink(missing_ok=True)
    code, log = _child(target, args, work, trace=trace)
    assert code == 0, log
    steps = [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]
    assert steps, "no durable step traced"
    return steps


# ----- what a store holds, row for row ------------------------------------------------------------------
def snapshot(root: Path) -> dict:
    """Everything a user can observe: live ids with their record and exact vector bytes, deleted ids,
    failures, the fingerprint and dtype. Segment layout and file names are not part of it."""
    store = FeatureStore.open(root, verify=True)
    rows = {}
    for ids, block in store.iter_blocks(chunk_rows=7):
        records = store.records_for(ids)
        for i, vec, rec in zip(ids, np.asarray(block), records):
            rows[int(i)] = (rec.to_dict().__repr__(), hashlib.sha256(np.ascontiguousarray(vec).tobytes()).hexdigest())
    return {"rows": rows, "deleted": store.deleted_ids.tolist(), "dtype": store.dtype,
            "fingerprint": repr(store.fingerprint), "backend": store.manifest.get("index_backend"),
            "failures": sorted((f["path"], f["reason"]) for f in store.failures)}


def rows_of(root: Path) -> set:
    """(record, vector) pairs of the live rows, for 'nothing but old or new rows is visible' checks."""
    store = FeatureStore.open(root, allow_unfinished=True, verify=True)
    out = set()
    for ids, block in store.iter_blocks():
        for rec, vec in zip(store.records_for(ids), np.asarray(block)):
            out.add((repr(rec.to_dict()), hashlib.sha256(np.ascontiguousarray(vec).tobytes()).hexdigest()))
    return out


def assert_nothing_left(root: Path) -> None:
    report = FeatureStore.open(root).verify()
    assert report.ok and report.leftovers == [], (report.problems, report.leftovers)
    siblings = sorted(p.name for p in root.parent.iterdir() if p.name.startswith(root.name + "."))
    assert siblings == [], siblings


# ----- catalogues ------------------------------------------------------------------------------------------
def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(path)


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "category"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def catalogues(scratch) -> dict:
    root = scratch / "catalogue"
    images = root / "images"
    images.mkdir(parents=True)
    for i in range(16):
        _image(images / f"{i:02d}.png", i)
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    os.symlink(images / "gone.png", images / "dangling.png")
    base = [(str(images / f"{i:02d}.png"), "abc"[i % 3]) for i in range(12)]
    base += [(str(images / "broken.png"), "a"), (str(images / "dangling.png"), "b")]
    # The change a shop makes overnight: 4 new photos, 3 gone, 2 re-shot (03, 04), 1 relabelled (05).
    new_rows = [(p, "z") if p.endswith("05.png") else (p, c) for p, c in base
                if not p.endswith(("00.png", "01.png", "02.png"))]
    new_rows += [(str(images / f"{i:02d}.png"), "new") for i in range(12, 16)]
    small = [(str(images / f"{i:02d}.png"), "ab"[i % 2]) for i in range(12, 16)] + [(str(images / "broken.png"), "a")]
    return {"root": root, "images": images, "base": _csv(root / "base.csv", base),
            "new": _csv(root / "new.csv", new_rows), "small": _csv(root / "small.csv", small)}


def _reshoot(catalogues: dict) -> None:
    # The re-shot photos: other pixels, a later mtime (set explicitly: file systems round mtimes).
    for n, name in enumerate(("03.png", "04.png")):
        path = catalogues["images"] / name
        _image(path, 100 + n)
        os.utime(path, ns=(2_000_000_000_000_000_000 + n, 2_000_000_000_000_000_000 + n))


def _index(csv_path: Path, out: Path, encoder: str = "test-thumb8", *extra: str) -> list[str]:
    return ["-q", "index", str(csv_path), "--out", str(out), "--encoder", encoder, *INDEX_ARGS, *extra]


# ----- the scenarios ----------------------------------------------------------------------------------------
def _check_fault_points(work: Path, template: Path | None, argv_for, kind: str, previous: dict | None,
                        reference: dict, old_rows: set, new_rows: set) -> int:
    """Run the command with a fault at every step; check the state left and that a re-run completes."""
    target = work / "index"
    if target.exists():
        shutil.rmtree(target)
    if template is not None:
        shutil.copytree(template, target)
    names = _steps("run_cli", (argv_for(target),), work)
    steps = [n for n, name in enumerate(names, 1) if kind == "kill" or name.startswith(ENOSPC_STEPS)]
    for step in steps:
        for leftover in work.glob("index*"):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        if template is not None:
            shutil.copytree(template, target)
        code, log = _cli(argv_for(target), work, fault_at=step, kind=kind)
        if kind == "kill":
            assert code == -9, f"step {step}: expected SIGKILL, got {code}: {log}"
        else:
            assert code in (0, 1), f"step {step}: {log}"
            assert "Traceback" not in log, f"step {step}: a traceback instead of a message:\n{log}"
            if code == 1:
                assert "No space left on device" in log and "clothsim index: error:" in log, log
        _check_left_state(target, step, previous, reference, old_rows, new_rows)
        code, log = _cli(argv_for(target), work)
        assert code == 0, f"step {step}: the re-run failed: {log}"
        assert snapshot(target) == reference, f"step {step}: the re-run did not give the uninterrupted result"
        assert_nothing_left(target)
    return len(steps)


def _check_left_state(target: Path, step: int, previous: dict | None, reference: dict, old_rows: set,
                      new_rows: set) -> None:
    """What a crash left is the previous state, the final one, or an unfinished state made only of old
    and new rows, which readers refuse; never a store that opens damaged."""
    if not FeatureStore.exists(target):
        assert previous is None or any(target.parent.glob(target.name + ".*")), \
            f"step {step}: the index vanished with nothing to recover it from"
        return
    try:
        state = snapshot(target)
    except UnfinishedStoreError:  # readers refuse it; what it holds is only old and new rows
        visible = rows_of(target)
        allowed = new_rows if previous is None else old_rows | new_rows
        assert visible <= allowed, f"step {step}: rows that belong to no state are visible"
        return
    except StoreIntegrityError as exc:
        pytest.fail(f"step {step}: the crash left a damaged index: {exc}")
    assert FeatureStore.open(target, allow_unfinished=True).sync_pending is None, f"step {step}: served unfinished"
    # A committed state: exactly the previous one or exactly the new one (its backend record may lag).
    comparable = {k: v for k, v in state.items() if k != "backend"}
    candidates = [s for s in (previous, reference) if s is not None]
    assert any(comparable == {k: v for k, v in s.items() if k != "backend"} for s in candidates), \
        f"step {step}: a committed state that is neither the old nor the new index"


@pytest.fixture(scope="module")
def built(catalogues, scratch) -> dict:
    """Reference results of each scenario, made once without faults."""
    work = scratch / "reference"
    work.mkdir()
    out = {}
    before = work / "before"  # the index as it was before the photos were re-shot
    assert _cli(_index(catalogues["base"], before), work)[0] == 0
    out["before"] = before
    _reshoot(catalogues)
    base = work / "base"
    assert _cli(_index(catalogues["base"], base), work)[0] == 0
    out["base"] = base
    synced = work / "synced"
    shutil.copytree(before, synced)
    code, log = _cli(_index(catalogues["new"], synced), work)
    assert code == 0 and "+4 added, -3 removed, ~2 re-encoded, 1 relabelled" in log, log
    out["synced"] = synced
    thumb4 = work / "thumb4"
    assert _cli(_index(catalogues["small"], thumb4, "test-thumb4"), work)[0] == 0
    out["thumb4"] = thumb4
    rebuilt = work / "rebuilt"
    shutil.copytree(thumb4, rebuilt)
    assert _cli(_index(catalogues["small"], rebuilt, "test-thumb8", "--overwrite"), work)[0] == 0
    out["rebuilt"] = rebuilt
    return out


def test_first_build_survives_a_kill_at_every_step(catalogues, built, work):
    reference = snapshot(built["base"])
    steps = _check_fault_points(work, None, lambda t: _index(catalogues["base"], t), "kill", None, reference,
                                set(), rows_of(built["base"]))
    assert steps >= 20  # create, three checkpoints, the final commit and the backend record


def test_sync_survives_a_kill_at_every_step(catalogues, built, work):
    previous, reference = snapshot(built["before"]), snapshot(built["synced"])
    _check_fault_points(work, built["before"], lambda t: _index(catalogues["new"], t), "kill", previous,
                        reference, rows_of(built["before"]), rows_of(built["synced"]))


def test_sync_survives_a_full_disk_at_every_step(catalogues, built, work):
    previous, reference = snapshot(built["before"]), snapshot(built["synced"])
    _check_fault_points(work, built["before"], lambda t: _index(catalogues["new"], t), "enospc", previous,
                        reference, rows_of(built["before"]), rows_of(built["synced"]))


def test_overwrite_builds_beside_and_survives_a_kill_at_every_step(catalogues, built, work):
    previous, reference = snapshot(built["thumb4"]), snapshot(built["rebuilt"])
    assert previous["fingerprint"] != reference["fingerprint"]
    _check_fault_points(work, built["thumb4"],
                        lambda t: _index(catalogues["small"], t, "test-thumb8", "--overwrite"), "kill", previous,
                        reference, rows_of(built["thumb4"]), rows_of(built["rebuilt"]))


def test_delete_is_all_or_nothing_under_a_kill_at_every_step(built, work):
    store = FeatureStore.open(built["base"])
    ids = store.live_ids()[[0, 3, 4]].tolist()
    target = work / "index"
    shutil.copytree(built["base"], target)
    steps = len(_steps("run_delete", (str(target), ids), work))
    after = snapshot(target)
    before = snapshot(built["base"])
    assert set(before["rows"]) - set(after["rows"]) == set(ids)
    for step in range(1, steps + 1):
        shutil.rmtree(target)
        shutil.copytree(built["base"], target)
        code, _ = _child("run_delete", (str(target), ids), work, fault_at=step)
        assert code == -9
        assert snapshot(target) in (before, after), f"step {step}: a half-applied delete"
