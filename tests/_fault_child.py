"""What a fault-injection child process runs: the real ``clothsim`` command line, or one store operation.

The crash-consistency tests start children from a fork server that imported this module (torch,
clothsim and the tiny test encoders included) once, so each child costs a fork rather than a fresh
interpreter; the fault itself comes from ``clothsim.fileio``'s environment hook (a SIGKILL or ENOSPC at
the N-th durable step).
"""

from __future__ import annotations

import os
import sys

import _tiny_encoders  # noqa: E402,F401  - registers test-thumb8 / test-thumb4
import pandas  # noqa: E402,F401  - pyarrow imports it on first use; once here instead of in every child
import pyarrow.parquet  # noqa: E402,F401
import torch  # noqa: E402,F401  - imported once in the fork server, never run there

import clothsim.features.extract  # noqa: E402,F401
import clothsim.index.exact  # noqa: E402,F401
import clothsim.similarity_index  # noqa: E402,F401
from clothsim.cli.main import build_parser, main  # noqa: E402
from clothsim.features.store import FeatureStore  # noqa: E402

build_parser()  # imports every command module and reads the plug-in entry points once, before forking


def _redirect(log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_cli(argv: list[str], env: dict[str, str], log_path: str) -> None:
    """Run ``clothsim argv`` with ``env`` added; the exit status is the command's."""
    os.environ.update(env)
    _redirect(log_path)
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_delete(store_dir: str, ids: list[int], env: dict[str, str], log_path: str) -> None:
    """Delete ``ids`` from the store (one transaction)."""
    os.environ.update(env)
    _redirect(log_path)
    FeatureStore.open(store_dir).delete(ids)
    os._exit(0)


def hold_writer_lock(root: str, held, release) -> None:
    """Hold the writer lock of the index folder ``root`` until ``release`` is set."""
    from clothsim.features.writer_lock import WriterLock

    with WriterLock(root):
        held.set()
        release.wait(60)


def run_cli_as(uid: int, gid: int, argv: list[str], env: dict[str, str], log_path: str) -> None:
    """:func:`run_cli` as another user (a test run as root sees what an ordinary user's permissions do)."""
    _redirect(log_path)
    if os.geteuid() != uid:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    os.environ.update(env)
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
