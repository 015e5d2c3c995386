"""`clothsim index` and `clothsim serve` run as the CLI runs them, for the backend tests: the colour
catalogue indexed with the tiny encoder, and the app `serve` builds (uvicorn.run captured, not served),
with a test client that waits until it is ready."""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest

import _tiny_encoders  # noqa: F401  (registers test-thumb8)

from clothsim.cli.main import main


def index_catalog(catalog, out: Path, *backend_args: str) -> None:
    """``clothsim index`` over the folder of ``catalog`` into ``out``, e.g. ``"--backend", "milvus"``."""
    folder = str(Path(catalog[0].path).parents[1])
    assert main(["-q", "index", folder, "--out", str(out), "--encoder", "test-thumb8", "--runtime", "torch",
                 "--workers", "0", *backend_args]) == 0


def served_app(index_dir: Path, monkeypatch):
    """``(app, TestClient)``: what ``clothsim serve --index index_dir`` would serve."""
    pytest.importorskip("fastapi", reason="the web extra is not installed")
    uvicorn = pytest.importorskip("uvicorn", reason="the web extra is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's testclient warns about its httpx
        from fastapi.testclient import TestClient

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    assert main(["serve", "--index", str(index_dir), "--runtime", "torch", "--memory-budget-mb", "100000"]) == 0
    assert apps, "serve did not start"
    return apps[0], TestClient


@contextmanager
def ready_client(app, TestClient):
    """A test client of ``app`` once ``/ready`` says so (``serve`` warms the index after it starts)."""
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200:
            assert app.state.service.startup_error is None, app.state.service.startup_error
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.05)
        yield client
