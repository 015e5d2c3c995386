"""The timm: encoder family: timm models by their pooled features, with timm's own preprocessing, weights
from the hub cache, a local checkpoint or a seeded random model, and ONNX exports that agree with torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("timm", reason="the hub extra (timm) is not installed")

import timm  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from clothsim.encoders.factory import build_network, create_encoder  # noqa: E402
from clothsim.encoders.hub_files import manual_path  # noqa: E402
from clothsim.errors import DataError, UnknownEncoderError, UsageError, WeightsUnavailableError  # noqa: E402
from clothsim.images import load_image  # noqa: E402
from helpers import REPO  # noqa: E402

SAMPLE_PHOTOS = sorted((REPO / "src/clothsim/assets/clothing_sample/test").glob("*/*.jpg"))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


@pytest.fixture(scope="module")
def photos() -> list:
    return [load_image(str(p)) for p in SAMPLE_PHOTOS[::20][:4]]


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_preprocessing_is_timms_eval_transform(name, photos):
    model = timm.create_model(name, pretrained=False, num_classes=0)
    reference = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    encoder = build_network(f"timm:{name}", weights="random")
    for photo in photos:
        ours = encoder.transform(photo)
        assert np.abs(ours - reference(photo).numpy()).max() < 1e-5


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_onnx_runtime_gives_torchs_vectors(name, photos):
    torch_encoder = create_encoder(f"timm:{name}", weights="random", runtime="torch")
    onnx_encoder = create_encoder(f"timm:{name}", weights="random", runtime="onnx")
    assert onnx_encoder.runtime == "onnx" and onnx_encoder.spec.model_file is not None
    assert onnx_encoder.fingerprint() == torch_encoder.fingerprint()
    expected = torch_encoder.encode_images(photos)
    found = onnx_encoder.encode_images(photos)
    assert expected.shape == (len(photos), torch_encoder.dim)
    assert _cos(expected, found).min() >= 0.9999
    # The fingerprint says which model, which weights and which preprocessing made the vectors.
    fingerprint = onnx_encoder.fingerprint()
    assert fingerprint["encoder"] == f"timm:{name}" and fingerprint["weights"] == "random"
    assert fingerprint["preprocessing"]["interpolation"] == "bicubic"


def test_pooled_features_are_timms_own(photos):
    encoder = build_network("timm:resnet18", weights="random")
    batch = torch.from_numpy(np.stack([encoder.transform(p) for p in photos]))
    with torch.no_grad():
        pooled = encoder.model.forward_head(encoder.model.forward_features(batch), pre_logits=True).numpy()
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    assert encoder.dim == 512 and _cos(encoder.embed(batch), pooled).min() > 0.99999


def test_a_local_checkpoint_is_loaded_with_its_hash_as_weights_id(tmp_path, photos):
    model = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    path = tmp_path / "resnet18-finetuned.safetensors"
    save_file(model.state_dict(), str(path))
    encoder = create_encoder("timm:resnet18", weights=str(path), runtime="onnx")
    from clothsim.encoders.weights import file_digest

    assert encoder.weights_id == file_digest(path) and encoder.spec.weights_source == str(path)
    model.reset_classifier(0)
    batch = torch.from_numpy(np.stack([encoder.transform(p) for p in photos]))
    with torch.no_grad():
        expected = model.eval()(batch).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert _cos(encoder.embed(batch.numpy()), expected).min() >= 0.9999
    # A torch file of the same weights, without the classifier, is read as well.
    torch.save(model.state_dict(), tmp_path / "trunk.pth")
    again = build_network("timm:resnet18", weights=str(tmp_path / "trunk.pth"))
    assert _cos(again.embed(batch), expected).min() >= 0.9999


def test_a_checkpoint_of_another_model_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("resnet34", pretrained=False).state_dict(), str(path))
    with pytest.raises(DataError, match="other.safetensors is not a checkpoint of timm:resnet18"):
        build_network("timm:resnet18", weights=str(path))


def test_an_unknown_name_lists_similar_ones_and_how_to_find_them():
    with pytest.raises(UnknownEncoderError) as caught:
        build_network("timm:resnet19", weights="random")
    message = str(caught.value)
    assert "resnet18" in message and "timm.list_models" in message


def test_offline_the_error_names_the_file_and_where_to_put_it():
    with pytest.raises(WeightsUnavailableError) as caught:
        build_network("timm:resnet18.a1_in1k")
    message = str(caught.value)
    assert "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in message
    assert str(manual_path("timm/resnet18.a1_in1k", "model.safetensors")) in message
    assert "--weights PATH" in message


def test_weights_placed_by_hand_are_used_offline(photos):
    model = timm.create_model("resnet18.a1_in1k", pretrained=False)
    target = manual_path("timm/resnet18.a1_in1k", "model.safetensors")
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(target))
    try:
        encoder = build_network("timm:resnet18.a1_in1k")
        assert encoder.weights_id != "random" and encoder.dim == 512
    finally:
        target.unlink()


def test_a_model_without_hub_weights_asks_for_a_file():
    with pytest.raises(UsageError, match="no pretrained weights"):
        build_network("timm:botnet50ts_256")  # an architecture timm has released no weights for


def test_gem_and_flip_wrap_a_timm_cnn(photos):
    for name in ("gem:timm:resnet18", "flip:timm:resnet18"):
        torch_encoder = create_encoder(name, weights="random", runtime="torch")
        onnx_encoder = create_encoder(name, weights="random", runtime="onnx")
        assert _cos(torch_encoder.encode_images(photos), onnx_encoder.encode_images(photos)).min() >= 0.9999
    with pytest.raises(UsageError, match="gem: needs a CNN encoder"):
        build_network("gem:timm:vit_tiny_patch16_224", weights="random")
