"""The light core: the main job runs where torch cannot be imported, and the modules keep their boundary.

Every command and API call of the core path runs in a subprocess whose ``import torch`` fails (``torch``
and ``torchvision`` set to ``None`` in ``sys.modules``, which makes any import of them raise), on real
photos, with the shipped ONNX model.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _no_torch import NO_TORCH, SRC, no_torch as _no_torch

SAMPLE = SRC / "clothsim" / "assets" / "clothing_sample"

# The modules that need the torch extra; every other module of the package imports without torch.
TORCH_MODULES = {
    "clothsim.encoders.torchvision_cnn", "clothsim.encoders.efficientnet_lite", "clothsim.encoders.torch_cnn",
    "clothsim.encoders.pooling", "clothsim.encoders.weights", "clothsim.runtimes.onnx_export",
    "clothsim.encoders.timm_network", "clothsim.encoders.open_clip_network", "clothsim.runtimes.text_export",
}
TORCH_PACKAGES = ("clothsim.training.", "clothsim.ensemble.")


def _all_modules() -> list[str]:
    names = []
    for path in sorted((SRC / "clothsim").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _needs_torch(module: str) -> bool:
    return module in TORCH_MODULES or any(module == p[:-1] or module.startswith(p) for p in TORCH_PACKAGES)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    """Real photos in both layouts a shop has: category folders, and a flat folder beside them."""
    root = tmp_path_factory.mktemp("catalogue")
    for category in ("dress", "shoes", "hat"):
        (root / "labelled" / category).mkdir(parents=True)
        for photo in sorted((SAMPLE / "train" / category).glob("*.jpg"))[:6]:
            shutil.copy(photo, root / "labelled" / category / photo.name)
    (root / "flat").mkdir()
    for photo in sorted((SAMPLE / "train").glob("*/*.jpg"))[::15]:
        shutil.copy(photo, root / "flat" / f"{photo.parent.name}-{photo.name}")
    return root


def test_index_search_verify_without_torch(catalogue, tmp_path):
    index = tmp_path / "idx"
    built = _no_torch("clothsim", "-q", "index", str(catalogue / "labelled"), "--out", str(index))
    assert built.returncode == 0, built.stderr
    spec = json.loads((index / "manifest.json").read_text())["encoder_spec"]
    assert spec["model_file"] == "package:efficientnet_lite0.onnx" and spec["precision"] == "fp32"
    query = next((SAMPLE / "test" / "shoes").glob("*.jpg"))
    found = _no_torch("clothsim", "search", str(query), "--index", str(index), "-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)[0]["results"]
    assert len(hits) == 3 and hits[0]["category"] == "shoes"
    checked = _no_torch("clothsim", "verify", str(index))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_flat_folder_is_indexed_synced_and_searched_without_categories(catalogue, tmp_path):
    flat = tmp_path / "flat"
    shutil.copytree(catalogue / "flat", flat)
    index = tmp_path / "idx"
    built = _no_torch("clothsim", "index", str(flat), "--out", str(index))
    assert built.returncode == 0, built.stderr
    n = len(list(flat.iterdir()))
    assert f"indexed {n} images" in built.stdout
    photo = sorted(flat.iterdir())[0]
    found = _no_torch("clothsim", "search", str(photo), "--index", str(index), "-k", "2", "--json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)[0]["results"]
    assert hits[0]["path"] == str(photo) and hits[0]["category"] is None and hits[0]["score"] > 0.999
    refused = _no_torch("clothsim", "search", str(photo), "--index", str(index), "--category", "dress")
    assert refused.returncode == 2 and "unknown category" in refused.stderr
    photo.unlink()  # the catalogue changes: a sync removes what is gone
    synced = _no_torch("clothsim", "index", str(flat), "--out", str(index))
    assert synced.returncode == 0 and "-1 removed" in synced.stdout, synced.stderr
    assert _no_torch("clothsim", "verify", str(index)).returncode == 0


def test_commands_that_need_labels_refuse_a_flat_folder(catalogue, tmp_path, capsys):
    from clothsim.cli.main import main

    for argv in (["evaluate", "--data", str(catalogue / "flat"), "--out", str(tmp_path / "e")],
                 ["train", "--data", str(catalogue / "flat"), "--out", str(tmp_path / "t")],
                 ["demo", "--data", str(catalogue / "flat"), "--out", str(tmp_path / "d")]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert "needs a category for every image" in err and "have none" in err, err
    assert not (tmp_path / "t").exists() and not (tmp_path / "d" / "index").exists()


def test_the_python_api_without_torch(catalogue, tmp_path):
    script = tmp_path / "api.py"
    script.write_text(f"""
import json, sys
from clothsim import SimilarityIndex, read_catalog
records = read_catalog({str(catalogue / "labelled")!r})
index, report = SimilarityIndex.build(records, {str(tmp_path / "idx")!r}, progress=False)
reopened = SimilarityIndex.open({str(tmp_path / "idx")!r})
hits = reopened.search(records[0].path, k=2)
added = reopened.add(read_catalog({str(catalogue / "flat")!r})[:3])
print(json.dumps({{"encoded": report.n_encoded, "first": hits[0].record.path, "score": hits[0].score,
                   "added": len(added), "size": len(reopened), "torch": "torch" in sys.modules and sys.modules["torch"] is not None}}))
""")
    done = _no_torch(str(script))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["encoded"] == 18 and result["added"] == 3 and result["size"] == 21
    assert result["score"] > 0.999 and not result["torch"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_demo_then_serve_and_upload_without_torch(tmp_path):
    demo = _no_torch("clothsim", "-q", "demo", "--out", str(tmp_path / "demo"))
    assert demo.returncode == 0, demo.stderr
    assert "precision@5" in demo.stdout and (tmp_path / "demo" / "results.png").is_file()
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", NO_TORCH, "clothsim", "serve", "--index",
                               str(tmp_path / "demo" / "index"), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(SRC)))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2)  # 503 until warmed
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.5)
        photo = next((SAMPLE / "test" / "hat").glob("*.jpg"))
        boundary = "clothsimtestboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n"
                "Content-Type: image/jpeg\r\n\r\n").encode() + photo.read_bytes() + \
            f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n3\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/search", data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert len(answer["results"]) == 3 and answer["query"]["kind"] == "upload"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_core_module_imports_without_torch():
    core = [m for m in _all_modules() if not _needs_torch(m)]
    script = "import importlib, sys\nfailed = []\nfor name in sys.argv[2:]:\n" \
             "    try:\n        importlib.import_module(name)\n" \
             "    except ImportError as exc:\n        failed.append(f'{name}: {exc}')\nprint('\\n'.join(failed))\n"
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"clothsim-core-imports-{os.getpid()}.py"
    path.write_text(script)
    try:
        done = _no_torch(str(path), *core)
    finally:
        path.unlink()
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("package", ["clothsim.encoders", "clothsim.runtimes", "clothsim.engines"])
def test_each_encoder_and_runtime_module_imports_alone(package):
    """A fresh interpreter per module: an import circle fails here whichever module comes first."""
    for name in (m for m in _all_modules() if m == package or m.startswith(package + ".")):
        done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, PYTHONPATH=str(SRC)))
        assert done.returncode == 0, f"{name}: {done.stderr[-1500:]}"


def test_a_damaged_model_file_in_an_index_is_reported_refused_and_put_back(catalogue, tmp_path):
    """An index of an exported network keeps its model file; damage to it is found by verify, refused by
    search, and the build command puts the file back."""
    from clothsim.cli.main import main

    index = tmp_path / "idx"
    argv = ["-q", "index", str(catalogue / "labelled"), "--out", str(index), "--weights", "random"]
    assert main(argv) == 0
    spec = json.loads((index / "manifest.json").read_text())["encoder_spec"]
    model = index / spec["model_file"]
    assert spec["model_file"].startswith("models/") and model.is_file()
    data = bytearray(model.read_bytes())
    data[len(data) // 3] ^= 0x55
    model.write_bytes(bytes(data))
    checked = _no_torch("clothsim", "verify", str(index))
    assert checked.returncode == 1 and "DAMAGED" in checked.stdout and str(model) in checked.stdout
    query = next((SAMPLE / "test" / "hat").glob("*.jpg"))
    refused = _no_torch("clothsim", "search", str(query), "--index", str(index))
    assert refused.returncode == 1 and "not the one recorded" in refused.stderr
    assert main(argv) == 0  # the same build command repairs it
    assert _no_torch("clothsim", "verify", str(index)).returncode == 0
    assert _no_torch("clothsim", "search", str(query), "--index", str(index)).returncode == 0


def test_data_summarises_splits_and_writes_a_catalogue_without_categories(catalogue, tmp_path, capsys):
    from clothsim.cli.main import main
    from clothsim.data import read_catalog

    mixed = tmp_path / "mixed"
    shutil.copytree(catalogue / "labelled", mixed)
    for photo in sorted((catalogue / "flat").iterdir())[:4]:
        shutil.copy(photo, mixed / photo.name)
    assert main(["data", str(mixed), "--split", "0.5", "--min-count", "7"]) == 0
    out = capsys.readouterr().out
    assert "22 images in 3 categories, 4 without a category" in out
    assert "dropped 'dress': 6 images < 7" in out  # every category has 6; the unlabelled are kept
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:] if line.strip()}
    assert rows["(no"] == ["category)", "2", "2", "4"]  # split as one group of their own
    flat = tmp_path / "flat.csv"
    assert main(["data", str(catalogue / "flat"), "--write-csv", str(flat)]) == 0
    again = read_catalog(flat)
    assert len(again) == len(list((catalogue / "flat").iterdir())) and {r.category for r in again} == {None}
