"""The built-in encoders through the registry: names, shapes, weights from files, missing weights."""

from __future__ import annotations

import functools
import hashlib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import models

import clothsim.encoders.weights as W
from clothsim.encoders import DEFAULT_ENCODER, create_encoder, list_encoders
from clothsim.encoders.torchvision_cnn import INCEPTION_V3, RESNET50, VGG16
from clothsim.encoders.torch_cnn import TorchCNNEncoder
from clothsim.errors import UnknownEncoderError, WeightsUnavailableError

BUILTINS = {
    # name: (dim, input size, feature-map side at that size)
    "vgg16": (512, 224, 7),
    "resnet50": (2048, 224, 7),
    "inception_v3": (2048, 299, 8),
    "efficientnet_lite0": (1280, 224, 7),
}


@functools.cache
def random_encoder(name: str) -> TorchCNNEncoder:
    # Shared within the module: building VGG16 (138M parameters) takes seconds on two cores.
    return create_encoder(name, weights="random")


def images(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def normalised_mean(fmap: torch.Tensor) -> np.ndarray:
    pooled = fmap.mean(dim=(2, 3)).numpy()
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_list_has_the_builtins_with_their_sizes() -> None:
    infos = {info.name: info for info in list_encoders()}
    for name, (dim, size, _) in BUILTINS.items():
        assert (infos[name].dim, infos[name].input_size) == (dim, size)
    assert DEFAULT_ENCODER == "efficientnet_lite0"


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(UnknownEncoderError) as info:
        create_encoder("vgg19", weights="random")
    assert "vgg19" in str(info.value)
    for name in BUILTINS:
        assert name in str(info.value)


def test_default_encoder_is_efficientnet_lite0() -> None:
    assert create_encoder(weights="random").name == "efficientnet_lite0"


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_random_weights_shapes_and_normalisation(name: str) -> None:
    dim, size, side = BUILTINS[name]
    enc = random_encoder(name)
    assert (enc.name, enc.dim, enc.input_size, enc.weights_id) == (name, dim, size, "random")
    assert enc.transform(Image.new("RGB", (400, 300))).shape == (3, size, size)
    x = images(size)
    vectors = enc.embed(x)
    assert vectors.shape == (2, dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    fmap = enc.feature_maps(x)
    assert fmap.shape == (2, dim, side, side)
    np.testing.assert_allclose(vectors, normalised_mean(fmap), atol=1e-5)
    assert not any(m.training for m in enc.trunk.modules())


def test_random_weights_are_deterministic() -> None:
    a = create_encoder("resnet50", weights="random")
    np.testing.assert_array_equal(a.embed(images(64)), random_encoder("resnet50").embed(images(64)))


def test_inception_uses_its_own_preprocessing() -> None:
    prep = random_encoder("inception_v3").preprocessing
    assert (prep.input_size, prep.resize_size) == (299, 342)


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


def whole_model_state(name: str, build: Callable[[], nn.Module], seed: int) -> dict[str, torch.Tensor]:
    """A torchvision state dict (classifier included) with weights unlike the encoders' seed-0 ones.

    Derived from the random encoder's trunk rather than a fresh torchvision build, whose random
    initialisation takes seconds.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {
        k: v * 1.2 + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
        for k, v in random_encoder(name).trunk.extractor.state_dict().items()
    }
    with torch.device("meta"):
        shapes = build().state_dict()
    state.update({k: torch.full(v.shape, 0.01) for k, v in shapes.items() if k not in state})  # classifiers
    return state


@pytest.mark.parametrize(
    ("name", "build", "size"),
    [
        # Small inputs keep this fast; the full input sizes are covered by the random-weights test.
        ("resnet50", models.resnet50, 64),
        (
            "inception_v3",
            lambda: models.inception_v3(aux_logits=True, transform_input=True, init_weights=False),
            107,
        ),
    ],
)
def test_local_state_dict_file(name: str, build: Callable[[], nn.Module], size: int, tmp_path: Path) -> None:
    state = whole_model_state(name, build, seed=1)
    assert any(k.startswith("fc.") for k in state)
    path = _save(state, tmp_path / f"{name}.pth")
    enc = create_encoder(name, weights=path)
    assert enc.weights_id == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    # Reference: torchvision's own model with these weights and its classifier removed (its forward
    # then pools and flattens).
    with torch.device("meta"):
        model = build()
    model.load_state_dict(state, assign=True)
    model.fc = nn.Identity()
    x = images(size)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(enc.embed(x), expected, atol=1e-5)
    assert not np.allclose(enc.embed(x), random_encoder(name).embed(x), atol=1e-3)


def test_resnet50_file_with_other_classifier_and_module_prefix(tmp_path: Path) -> None:
    state = random_encoder("resnet50").trunk.extractor.state_dict()
    state = {f"module.{k}": v * 1.5 for k, v in state.items()}
    state["module.fc.weight"] = torch.zeros(10, 2048)  # fine-tuned for 10 classes: ignored
    state["module.fc.bias"] = torch.zeros(10)
    enc = create_encoder("resnet50", weights=_save(state, tmp_path / "r.pth"))
    assert torch.equal(enc.trunk.extractor.conv1.weight, state["module.conv1.weight"])


@pytest.fixture(scope="module")
def vgg_conv_state() -> dict[str, torch.Tensor]:
    """A VGG16 conv part unlike seed-0 random weights, keyed ``features.N.*`` like the shared file."""
    gen = torch.Generator().manual_seed(2)
    trunk = random_encoder("vgg16").trunk.state_dict()
    return {f"features.{k}": v * 1.2 + 0.01 * torch.randn(v.shape, generator=gen) for k, v in trunk.items()}


def test_vgg16_whole_model_and_conv_part_files_agree(vgg_conv_state, tmp_path: Path) -> None:
    # A real whole-model file is 0.5 GB; classifier keys of any shape stand in for it, since they
    # are ignored.
    classifier = {f"classifier.{i}.{p}": torch.zeros(3, 2) for i in (0, 3, 6) for p in ("weight", "bias")}
    files = {
        "whole": _save({**vgg_conv_state, **classifier}, tmp_path / "whole.pth"),
        "conv": _save(vgg_conv_state, tmp_path / "conv.pth"),
        "unprefixed": _save(
            {k.removeprefix("features."): v for k, v in vgg_conv_state.items()}, tmp_path / "u.pth"
        ),
        "dataparallel": _save({f"module.{k}": v for k, v in vgg_conv_state.items()}, tmp_path / "m.pth"),
    }
    x = images(64)  # any size works for checking which weights were loaded
    encoders = {kind: create_encoder("vgg16", weights=path) for kind, path in files.items()}
    conv_vectors = encoders["conv"].embed(x)
    assert not np.allclose(conv_vectors, random_encoder("vgg16").embed(x), atol=1e-3)
    for kind, enc in encoders.items():
        np.testing.assert_allclose(enc.embed(x), conv_vectors, atol=1e-6, err_msg=kind)
    assert torch.equal(encoders["conv"].trunk[28].bias, vgg_conv_state["features.28.bias"])


def test_vgg16_file_with_missing_keys_names_file_and_keys(vgg_conv_state, tmp_path: Path) -> None:
    partial = {k: v for k, v in vgg_conv_state.items() if not k.startswith("features.28.")}
    path = _save(partial, tmp_path / "partial.pth")
    with pytest.raises(
        ValueError, match=r"partial\.pth: 2 of 26 weights missing, first: features\.28\.weight"
    ):
        create_encoder("vgg16", weights=path)


def test_file_for_another_architecture_is_rejected(tmp_path: Path) -> None:
    state = random_encoder("efficientnet_lite0").trunk.model.state_dict()
    path = _save(state, tmp_path / "lite.pth")
    with pytest.raises(ValueError, match=r"lite\.pth: .* missing"):
        create_encoder("resnet50", weights=path)


def test_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_encoder("vgg16", weights=tmp_path / "nowhere.pth")


@pytest.mark.parametrize(
    ("name", "url"), [("vgg16", VGG16.official.url), ("inception_v3", INCEPTION_V3.official.url)]
)
def test_official_weights_without_network_fail_fast_with_advice(
    name: str, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(W, "DOWNLOAD_TIMEOUT_S", 2.0)
    requested = []
    real_urlopen = urllib.request.urlopen

    def offline_urlopen(target: str, timeout: float) -> object:
        # Record what would be fetched, then fail on a real socket (a refused loopback port), so the
        # test neither needs nor uses the internet even where there is some.
        requested.append(target)
        return real_urlopen("http://127.0.0.1:9/", timeout=timeout)

    monkeypatch.setattr(urllib.request, "urlopen", offline_urlopen)
    with pytest.raises(WeightsUnavailableError) as info:
        create_encoder(name)
    assert requested == [url]
    message = str(info.value)
    assert url in message
    assert str(tmp_path / "hub" / "checkpoints" / Path(url).name) in message
    assert "--weights PATH" in message


def test_official_weights_found_in_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = {k: v + 0.5 for k, v in random_encoder("resnet50").trunk.extractor.state_dict().items()}
    cached = tmp_path / "hub" / "checkpoints" / Path(RESNET50.official.url).name
    cached.parent.mkdir(parents=True)
    _save(state, cached)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    enc = create_encoder("resnet50")
    assert enc.weights_id == "ResNet50_Weights.IMAGENET1K_V1"
    assert torch.equal(enc.trunk.extractor.conv1.weight, state["conv1.weight"])
