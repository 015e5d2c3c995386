"""Encoder options as families: GeM pooling (gem:) and test-time flip (flip:), on real photos, in both
runtimes, with their own fingerprints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from clothsim.encoders import build_encoder, create_encoder
from clothsim.encoders.spec import EncoderSpec
from clothsim.errors import UsageError

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    paths = [next((SAMPLE / "train" / c).glob("*.jpg")) for c in ("dress", "hat", "shoes", "pants")]
    return [Image.open(p).convert("RGB") for p in paths]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def test_gem_is_its_own_encoder_and_runs_the_same_on_onnx(photos):
    plain = create_encoder("efficientnet_lite0", runtime="torch")
    gem = create_encoder("gem:efficientnet_lite0", runtime="torch")
    assert gem.name == "gem:3:efficientnet_lite0" and gem.dim == plain.dim
    assert gem.fingerprint() != plain.fingerprint()  # an index of one is never searched with the other
    g, p = gem.encode_images(photos), plain.encode_images(photos)
    assert np.allclose(np.linalg.norm(g, axis=1), 1, atol=1e-5)
    assert _cos(g, p).max() < 0.9999  # the pooling changes the vectors...
    assert _cos(g, p).min() > 0.8  # ...of the same feature map
    onnx = create_encoder("gem:efficientnet_lite0", runtime="onnx")
    assert onnx.runtime == "onnx" and _cos(onnx.encode_images(photos), g).min() >= 0.9999
    # p = 1 is the average: the plain encoder's vectors again.
    assert _cos(create_encoder("gem:1:efficientnet_lite0", runtime="torch").encode_images(photos), p).min() > 0.9999


def test_flip_makes_a_photo_and_its_mirror_image_one_vector(photos):
    flip = create_encoder("flip:efficientnet_lite0", runtime="torch")
    plain = create_encoder("efficientnet_lite0", runtime="torch")
    mirrored = [ImageOps.mirror(img) for img in photos]
    # Without the option a mirror image is another vector; with it, the same one.
    assert _cos(plain.encode_images(photos), plain.encode_images(mirrored)).min() < 0.999
    assert _cos(flip.encode_images(photos), flip.encode_images(mirrored)).min() > 0.9999
    onnx = create_encoder("flip:gem:efficientnet_lite0", runtime="onnx")
    torch_both = create_encoder("flip:gem:efficientnet_lite0", runtime="torch")
    assert onnx.name == torch_both.name == "flip:gem:3:efficientnet_lite0"
    assert _cos(onnx.encode_images(photos), torch_both.encode_images(photos)).min() >= 0.9999


def test_the_recorded_spec_rebuilds_the_same_encoder(photos):
    encoder = create_encoder("flip:gem:2.5:efficientnet_lite0", runtime="torch")
    again = build_encoder(EncoderSpec.from_dict(encoder.spec.to_dict()))
    assert again.fingerprint() == encoder.fingerprint()
    assert _cos(again.encode_images(photos[:2]), encoder.encode_images(photos[:2])).min() > 0.9999


@pytest.mark.parametrize("name, message", [
    ("gem:4", "name the encoder after the exponent"),
    ("gem:50:vgg16", "within 0.5 and 20"),
    ("gem:flip:efficientnet_lite0", "needs a CNN encoder"),
])
def test_bad_options_are_usage_errors(name, message):
    with pytest.raises(UsageError, match=message):
        create_encoder(name, runtime="torch", weights="random" if "vgg16" in name else None)


def test_gem_pool_does_not_overflow_at_large_exponents():
    import torch

    from clothsim.encoders.pooling import gem_pool

    fmap = torch.rand(2, 3, 7, 7) * 200  # VGG-sized activations: 200^20 is inf in float32
    pooled = gem_pool(fmap, 20.0)
    assert torch.isfinite(pooled).all()
    naive = fmap.double().pow(20).mean(dim=(2, 3)).pow(1 / 20)
    assert torch.allclose(pooled.double(), naive, rtol=1e-5)
    assert torch.allclose(gem_pool(fmap, 1.0), fmap.mean(dim=(2, 3)), rtol=1e-5)


def test_close_exponents_are_different_encoders():
    a = create_encoder("gem:3:efficientnet_lite0", runtime="torch")
    b = create_encoder("gem:3.25:efficientnet_lite0", runtime="torch")
    assert a.name == "gem:3:efficientnet_lite0" and b.name == "gem:3.25:efficientnet_lite0"
    assert a.fingerprint()["gem_p"] == 3.0 and a.fingerprint() != b.fingerprint()
