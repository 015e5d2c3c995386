"""Odd catalogue entries and odd images: reported by path with a reason, never deleted for being
unreadable, never a hang; and what `clothsim index` says about a run is exactly what it did.

Unreadable folders and files are made with real permissions; when the tests run as root (who reads
anything) the command runs in a child process as the unprivileged user ``nobody``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import _tiny_encoders  # noqa: E402,F401  - registers test-thumb8

from clothsim.cli.main import main  # noqa: E402
from clothsim.features.store import FeatureStore  # noqa: E402
from clothsim.images import ImageDecodeError, load_image  # noqa: E402

ENCODER = ["--encoder", "test-thumb8", "--runtime", "torch", "--workers", "0"]
NOBODY = 65534


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def shared_tmp():
    """A folder every user may enter (pytest's own is root's alone), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="clothsim-odd-"))
    path.chmod(0o777)
    yield path
    for p in path.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o777)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def photos(clothing_dataset, shared_tmp) -> Path:
    """Three real photos in each of the categories A, B and C, readable and writable by anyone."""
    root = shared_tmp / "catalogue"
    for category, source in (("A", "dress"), ("B", "shoes"), ("C", "hat")):
        (root / category).mkdir(parents=True)
        for path in sorted((clothing_dataset / "train" / source).iterdir())[:3]:
            shutil.copy2(path, root / category / path.name)
    return root


def _open_to_all(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o666)


def _as_ordinary_user(argv: list[str], work: Path) -> tuple[int, str]:
    """``clothsim argv`` as a user whom permissions apply to (``nobody`` when we are root)."""
    from test_crash_consistency import CTX

    import _fault_child

    log = work / "ordinary.log"
    uid = NOBODY if os.geteuid() == 0 else os.geteuid()
    gid = NOBODY if os.geteuid() == 0 else os.getegid()
    process = CTX.Process(target=_fault_child.run_cli_as, args=(uid, gid, argv, {}, str(log)))
    process.start()
    process.join(120)
    assert not process.is_alive()
    return process.exitcode, log.read_text(errors="replace")


def _index_argv(photos: Path, out: Path, *extra: str) -> list[str]:
    return ["-q", "index", str(photos), "--out", str(out), *ENCODER, *extra]


def test_an_unreadable_category_folder_is_an_error_and_nothing_is_deleted(capsys, photos, shared_tmp):
    out = shared_tmp / "index"
    assert run(capsys, *_index_argv(photos, out))[0] == 0
    _open_to_all(out)
    before = FeatureStore.open(out)
    (photos / "B").chmod(0)
    code, log = _as_ordinary_user(_index_argv(photos, out), shared_tmp)
    assert code == 1, log
    assert f"cannot list {photos / 'B'} (Permission denied)" in log and "Traceback" not in log
    after = FeatureStore.open(out)
    assert len(after) == len(before) == 9 and after.manifest["generation"] == before.manifest["generation"]


def test_an_unreadable_file_keeps_its_row_and_is_reported(capsys, photos, shared_tmp):
    out = shared_tmp / "index"
    assert run(capsys, *_index_argv(photos, out))[0] == 0
    _open_to_all(out)
    locked = sorted((photos / "B").iterdir())[0]
    locked.chmod(0)
    code, log = _as_ordinary_user(_index_argv(photos, out), shared_tmp)
    assert code == 0, log
    assert f"skipped {locked}: permission denied (not readable); its vector from an earlier run is kept" in log
    assert "-0 removed" in log
    store = FeatureStore.open(out)
    assert len(store) == 9 and str(locked) in {r.path for r in store.records_for(store.live_ids())}


def test_a_file_name_that_is_not_utf8_is_reported_and_the_rest_indexed(capsys, photos, tmp_path):
    source = sorted((photos / "A").iterdir())[0]
    odd = os.path.join(os.fsencode(photos / "A"), b"caf\xe9.jpg")  # Latin-1, as an old camera card has it
    shutil.copyfile(source, odd)
    out = tmp_path / "index"
    for attempt in range(2):  # and the rerun does the same, no crash
        code, stdout, err = run(capsys, *_index_argv(photos, out))
        assert code == 0 and "Traceback" not in err, err
        assert f"skipped {photos / 'A'}/caf\\xe9.jpg: its file name is not valid UTF-8" in stdout
    assert len(FeatureStore.open(out)) == 9


def test_a_fifo_a_socket_and_a_device_are_reported_and_never_hang(capsys, photos, tmp_path):
    fifo = photos / "A" / "pipe.jpg"
    os.mkfifo(fifo)
    sock_path = photos / "B" / "socket.png"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    device = photos / "C" / "null.jpg"
    os.symlink("/dev/null", device)
    out = tmp_path / "index"
    try:
        code, stdout, err = run(capsys, *_index_argv(photos, out))
    finally:
        server.close()
    assert code == 0, err
    assert f"skipped {fifo}: a named pipe (FIFO), not an image file" in stdout
    assert f"skipped {sock_path}: a socket, not an image file" in stdout
    assert f"skipped {device}: a device, not an image file" in stdout
    assert len(FeatureStore.open(out)) == 9

    finished = []
    worker = threading.Thread(target=lambda: finished.append(run(capsys, "search", str(fifo), "--index", str(out),
                                                                  "--runtime", "torch")), daemon=True)
    worker.start()
    worker.join(60)
    assert finished, "searching with a FIFO as the photo hung"
    code, _, err = finished[0]
    assert code == 1 and f"{fifo}: cannot decode image (a named pipe (FIFO), not an image file)" in err


def test_a_float_tiff_is_converted_by_its_range_or_refused(clothing_dataset, tmp_path):
    photo = sorted((clothing_dataset / "train" / "dress").iterdir())[0]
    grey = np.asarray(Image.open(photo).convert("L"), dtype=np.float32)
    unit = tmp_path / "unit.tif"
    Image.fromarray(grey / 255.0, mode="F").save(unit)  # 0..1, as scientific software writes them
    loaded = np.asarray(load_image(unit).convert("L"), dtype=np.float32)
    assert np.abs(loaded - grey).mean() < 1.0  # the picture, not black
    byte_range = tmp_path / "bytes.tif"
    Image.fromarray(grey, mode="F").save(byte_range)  # 0..255
    assert np.abs(np.asarray(load_image(byte_range).convert("L"), dtype=np.float32) - grey).mean() < 1.0
    for name, values in (("hdr", grey * 40.0), ("nan", np.where(grey > 100, np.nan, grey))):
        path = tmp_path / f"{name}.tif"
        Image.fromarray(values.astype(np.float32), mode="F").save(path)
        with pytest.raises(ImageDecodeError, match="32-bit float pixels"):
            load_image(path)


def test_an_interrupted_update_is_refused_to_readers_until_finished(capsys, photos, tmp_path):
    from test_crash_consistency import _cli

    out = tmp_path / "index"
    assert run(capsys, *_index_argv(photos, out, "--checkpoint-every", "1"))[0] == 0
    for n, source in enumerate(sorted((photos / "C").iterdir())):
        shutil.copy2(source, photos / "A" / f"more-{n}.jpg")
    argv = _index_argv(photos, out, "--checkpoint-every", "1")
    code, log = _cli(argv, tmp_path, fault_at=2, match="rename manifest.json")  # killed after a checkpoint
    assert code == -9, log
    query = str(sorted((photos / "A").iterdir())[0])
    code, stdout, err = run(capsys, "-q", "search", query, "--index", str(out), "--runtime", "torch")
    assert code == 1 and not stdout
    assert "interrupted" in err and "run the same `clothsim index` command again" in err
    assert run(capsys, *argv)[0] == 0
    assert run(capsys, "-q", "search", query, "--index", str(out), "--runtime", "torch")[0] == 0


def _overwrite_setup(capsys, photos: Path, tmp_path: Path) -> tuple[Path, dict]:
    out = tmp_path / "index"
    assert run(capsys, *_index_argv(photos, out))[0] == 0
    return out, {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _unchanged(out: Path, before: dict) -> None:
    assert {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name)) == [out.name]


def test_a_full_disk_during_overwrite_leaves_no_partial_rebuild(capsys, photos, tmp_path, monkeypatch):
    from clothsim import fileio

    out, before = _overwrite_setup(capsys, photos, tmp_path)
    monkeypatch.setattr(fileio, "_fault_count", 0)
    monkeypatch.setenv(fileio.FAULT_AT_ENV, "3")
    monkeypatch.setenv(fileio.FAULT_KIND_ENV, "enospc")
    monkeypatch.setenv(fileio.FAULT_MATCH_ENV, "write-middle")
    code, _, err = run(capsys, *_index_argv(photos, out, "--overwrite", "--checkpoint-every", "2"))
    assert code == 1 and "No space left on device" in err and "Traceback" not in err
    _unchanged(out, before)


def test_ctrl_c_during_overwrite_leaves_no_partial_rebuild(capsys, photos, tmp_path, monkeypatch):
    import clothsim.features.store.writer as store_module  # where the writer writes its Parquet files

    out, before = _overwrite_setup(capsys, photos, tmp_path)
    real, calls = store_module.write_parquet, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module, "write_parquet", interrupted)
    assert run(capsys, *_index_argv(photos, out, "--overwrite", "--checkpoint-every", "2"))[0] == 130
    _unchanged(out, before)


def test_sigterm_during_overwrite_leaves_no_partial_rebuild(capsys, photos, tmp_path):
    from test_one_writer import _start_stopped

    out, before = _overwrite_setup(capsys, photos, tmp_path)
    argv = _index_argv(photos, out, "--overwrite", "--checkpoint-every", "2")
    process = _start_stopped(argv, tmp_path, "rename manifest.json", 3)  # mid-rebuild
    os.kill(process.pid, signal.SIGTERM)  # delivered when it continues
    os.kill(process.pid, signal.SIGCONT)
    process.join(120)
    assert process.exitcode == 130, (tmp_path / "first.log").read_text()
    _unchanged(out, before)


def test_what_a_run_reports_is_what_it_did(capsys, photos, tmp_path):
    out = tmp_path / "index"
    assert run(capsys, *_index_argv(photos, out))[0] == 0
    broken = photos / "A" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    Image.new("1", (9500, 9500)).save(photos / "B" / "huge.png")  # over Pillow's warning limit too
    good = photos / "C" / "copy.jpg"
    shutil.copy2(sorted((photos / "A").iterdir())[1], good)
    code, stdout, err = run(capsys, *_index_argv(photos, out))
    assert code == 0, err
    assert "synced: +1 added" in stdout and "1 encoded now" in stdout, stdout  # the two undecodable: not added
    [line] = [line for line in stdout.splitlines() if line.startswith(f"skipped {broken}")]
    assert line.count(str(broken)) == 1 and "cannot decode image" in line  # the path once
    assert "DecompressionBombWarning" not in err and "could be decompression bomb" not in err
    good.unlink()
    code, stdout, _ = run(capsys, *_index_argv(photos, out))
    assert code == 0 and "-1 removed" in stdout and "nothing needed encoding" in stdout and "nan" not in stdout


def test_searching_a_photo_that_is_a_fifo_does_not_block(tmp_path):
    fifo = tmp_path / "q.jpg"
    os.mkfifo(fifo)
    outcome = []

    def load():
        try:
            load_image(fifo)
        except ImageDecodeError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(10)
    assert outcome and "a named pipe" in str(outcome[0]), "opening a FIFO blocked or was not refused"
    assert time.monotonic() - started < 5
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
