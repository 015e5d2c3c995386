"""int8 indexes: calibrated on the catalogue, stamped as another model, kept in the index folder, reopened
exactly, refused where int8 was not validated or its file is damaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clothsim.cli.main import main
from clothsim.data import read_folder_catalog
from clothsim.encoders.registry import create_encoder, encoder_registry
from clothsim.errors import DataError, UsageError
from clothsim.features.store import FeatureStore
from clothsim.runtimes.onnx_runtime import OnnxEncoder
from clothsim.similarity_index import SimilarityIndex

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"


@pytest.fixture()
def lite0_offered(monkeypatch):
    """Whatever the measured verdict for efficientnet_lite0, let these tests build its int8 model."""
    monkeypatch.setattr(encoder_registry.get("efficientnet_lite0"), "int8_validated", True, raising=False)


@pytest.fixture(scope="module")
def gallery():
    return [r for r in read_folder_catalog(SAMPLE) if r.split == "train"][::3]


def kept_model(index_dir: Path) -> Path:
    """The model file the index folder records (its spec names it relative to the folder)."""
    spec = json.loads((index_dir / "manifest.json").read_text())["encoder_spec"]
    assert spec["model_file"].startswith("models/")
    return index_dir / spec["model_file"]


def test_int8_index_is_stamped_kept_and_reopened(lite0_offered, gallery, tmp_path):
    built, report = SimilarityIndex.build(gallery, tmp_path / "idx", precision="int8", calibration_images=16,
                                          num_workers=0, progress=False)
    assert isinstance(built.encoder, OnnxEncoder) and built.encoder.spec.precision == "int8"
    assert report.n_encoded == len(gallery)
    fingerprint = json.loads((tmp_path / "idx" / "manifest.json").read_text())["fingerprint"]
    kept = kept_model(tmp_path / "idx")
    assert fingerprint["precision"] == "int8" and kept.is_file()
    assert fingerprint["quantized_sha256"] == built.encoder.spec.model_sha256

    reopened = SimilarityIndex.open(tmp_path / "idx")
    assert reopened.encoder.spec.precision == "int8" and reopened.encoder.model_path == kept
    query = next(SAMPLE.glob("test/shoes/*.jpg"))
    assert [h.id for h in reopened.search(query, k=5)] == [h.id for h in built.search(query, k=5)]

    # int8 vectors are close to float32 ones, but they are another model: a float32 encoder is refused.
    fp32 = create_encoder("efficientnet_lite0")
    photos = [str(p) for p in sorted(SAMPLE.glob("test/*/*.jpg"))[::10]]
    cosine = np.sum(fp32.encode_images([_open(p) for p in photos]) * reopened.embed(photos), axis=1)
    assert cosine.mean() > 0.95
    with pytest.raises(Exception, match="different encoder setup"):
        SimilarityIndex.open(tmp_path / "idx", encoder=fp32)


def _open(path: str):
    from clothsim.images import load_image

    return load_image(path)


def test_a_damaged_int8_model_is_refused_naming_the_file(lite0_offered, gallery, tmp_path):
    SimilarityIndex.build(gallery[:12], tmp_path / "idx", precision="int8", calibration_images=8, num_workers=0,
                          progress=False)
    kept = kept_model(tmp_path / "idx")
    kept.write_bytes(kept.read_bytes()[:-100])
    with pytest.raises(DataError, match=str(kept)):
        SimilarityIndex.open(tmp_path / "idx")
    kept.unlink()
    with pytest.raises(DataError, match="missing"):
        SimilarityIndex.open(tmp_path / "idx")


def test_int8_needs_the_onnx_runtime_and_a_validated_encoder(gallery, tmp_path, monkeypatch):
    monkeypatch.setattr(encoder_registry.get("efficientnet_lite0"), "int8_validated", False, raising=False)
    with pytest.raises(UsageError, match="not offered for efficientnet_lite0"):
        SimilarityIndex.build(gallery[:4], tmp_path / "a", precision="int8", num_workers=0, progress=False)
    with pytest.raises(UsageError, match="onnx runtime"):
        SimilarityIndex.build(gallery[:4], tmp_path / "b", precision="int8", runtime="torch", num_workers=0,
                              progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_builds_and_searches_an_int8_index(lite0_offered, tmp_path, capsys):
    out = tmp_path / "idx"
    code = main(["-q", "index", str(SAMPLE / "train"), "--out", str(out), "--precision", "int8",
                 "--calibration-images", "8", "--workers", "0"])
    assert code == 0, capsys.readouterr().err
    assert "indexed 220 images" in capsys.readouterr().out
    query = next(SAMPLE.glob("test/hat/*.jpg"))
    assert main(["search", str(query), "--index", str(out), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert len(hits) == 3 and hits[0]["category"] == "hat"


def test_an_int8_index_from_before_specs_were_recorded_still_opens(lite0_offered, gallery, tmp_path):
    built, _ = SimilarityIndex.build(gallery[:12], tmp_path / "idx", precision="int8", calibration_images=8,
                                     num_workers=0, progress=False)
    # Such an index recorded only its fingerprint and kept its model at models/<encoder>-int8.onnx.
    kept = kept_model(tmp_path / "idx")
    kept.rename(kept.parent / "efficientnet_lite0-int8.onnx")
    FeatureStore.open(tmp_path / "idx").commit(encoder_spec=None)
    reopened = SimilarityIndex.open(tmp_path / "idx")
    assert reopened.encoder.spec.precision == "int8"
    assert reopened.encoder.model_path == kept.parent / "efficientnet_lite0-int8.onnx"
    query = next(SAMPLE.glob("test/shoes/*.jpg"))
    assert [h.id for h in reopened.search(query, k=5)] == [h.id for h in built.search(query, k=5)]
