"""Distributed indexing on Ray: the same index as the local engine, bad files reported alike, and a run
whose driver is killed finishes, when run again, to exactly the local result."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clothsim.cli.main import main
from clothsim.data import CatalogRecord, read_folder_catalog
from clothsim.features import FeatureStore
from clothsim.fileio import FAULT_AT_ENV, FAULT_MATCH_ENV
from clothsim.similarity_index import SimilarityIndex

ray = pytest.importorskip("ray")
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of two CPUs, started by this test module and stopped after it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    """Real photos (the bundled sample, four categories) plus files that cannot be encoded."""
    root = tmp_path_factory.mktemp("shop")
    for category in ("dress", "hat", "shoes", "pants"):
        (root / category).mkdir()
        for photo in sorted((SAMPLE / "train" / category).glob("*.jpg"))[:10]:
            shutil.copy(photo, root / category / photo.name)
    good = next((root / "hat").glob("*.jpg")).read_bytes()
    (root / "hat" / "zz-truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "shoes" / "zz-not-an-image.jpg").write_bytes(b"this is text, not a JPEG")
    return root


def _vectors(folder: Path) -> tuple[np.ndarray, list[tuple[int, str]], list[dict]]:
    store = FeatureStore.open(folder)
    vectors, items = store.load_vectors()
    failures = sorted((f["path"], f["reason"]) for f in store.failures)
    return vectors, [(item.id, item.record.path) for item in items], failures


def test_ray_builds_the_local_index(ray_cluster, shop, tmp_path):
    records = read_folder_catalog(shop)
    # One photo named by a URI, as on object storage: both engines read it through pyarrow.
    records.append(CatalogRecord(next((shop / "dress").glob("*.jpg")).as_uri(), "dress"))
    local, local_report = SimilarityIndex.build(records, tmp_path / "local", num_workers=0, progress=False)
    distributed, ray_report = SimilarityIndex.build(records, tmp_path / "ray", engine="ray",
                                                    engine_options={"ray_address": ray_cluster, "actors": 2},
                                                    batch_size=8, checkpoint_every=16, progress=False)
    assert local_report.n_encoded == ray_report.n_encoded == 41
    local_vectors, local_ids, local_failures = _vectors(tmp_path / "local")
    ray_vectors, ray_ids, ray_failures = _vectors(tmp_path / "ray")
    assert ray_ids == local_ids  # same ids for the same records
    assert np.sum(local_vectors * ray_vectors, axis=1).min() >= 0.9999
    assert ray_failures == local_failures and len(ray_failures) == 2
    assert {Path(p).name for p, _ in ray_failures} == {"zz-truncated.jpg", "zz-not-an-image.jpg"}
    query = next((SAMPLE / "test" / "hat").glob("*.jpg"))
    assert [h.id for h in distributed.search(query, k=5)] == [h.id for h in local.search(query, k=5)]


def _committed_rows(folder: Path) -> int:
    try:
        return FeatureStore.open(folder, allow_unfinished=True, verify=False, check_files=False).total_rows
    except Exception:  # not written yet, or mid-commit
        return 0


def test_a_killed_driver_resumes_to_the_local_result(ray_cluster, tmp_path):
    gallery = SAMPLE / "train"
    target = tmp_path / "ray"
    argv = [sys.executable, "-m", "clothsim.cli.main", "-q", "index", str(gallery), "--out", str(target),
            "--engine", "ray", "--ray-address", ray_cluster, "--actors", "2", "--batch-size", "8",
            "--checkpoint-every", "16"]
    # The driver kills itself (SIGKILL) just before its 4th manifest commit, while the actors are busy:
    # a deterministic mid-run kill, not a race against how fast this machine encodes.
    env = dict(os.environ, **{FAULT_AT_ENV: "4", FAULT_MATCH_ENV: "rename manifest.json"})
    killed = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = _committed_rows(target)
    assert 0 < partial < 220

    finished = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert main(["-q", "index", str(gallery), "--out", str(tmp_path / "local"), "--workers", "0"]) == 0
    ray_vectors, ray_ids, _ = _vectors(target)
    local_vectors, local_ids, _ = _vectors(tmp_path / "local")
    assert len(ray_ids) == 220 and ray_ids == local_ids  # no row lost or doubled, same ids
    assert np.sum(local_vectors * ray_vectors, axis=1).min() >= 0.9999


def test_without_ray_the_engine_fails_at_once_with_the_pip_line(monkeypatch, capsys, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real_find_spec(name, *a))
    code = main(["index", str(SAMPLE / "train"), "--out", str(tmp_path / "x"), "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'clothsim[distributed]'" in err
    assert not (tmp_path / "x").exists()
