"""TorchCNNEncoder on a tiny hand-made trunk: pooling, normalisation, batch checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from clothsim.encoders.base import Preprocessing
from clothsim.encoders.torch_cnn import TorchCNNEncoder


def tiny_encoder(dim: int = 4) -> TorchCNNEncoder:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1), nn.ReLU(), nn.Dropout(0.5))
    return TorchCNNEncoder("tiny", dim, Preprocessing(input_size=8, resize_size=8), trunk, "random")


def test_embed_is_normalised_global_average_of_feature_map() -> None:
    enc = tiny_encoder()
    batch = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    fmap = enc.feature_maps(batch)
    # Naive reference: mean over every spatial position, then divide by the Euclidean norm.
    expected = np.stack([[fmap[i, c].mean().item() for c in range(4)] for i in range(3)])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = enc.embed(batch)
    assert got.dtype == np.float32 and got.shape == (3, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_eval_mode_makes_embeddings_repeatable() -> None:
    enc = tiny_encoder()  # the trunk has dropout, which would make two calls differ in train mode
    batch = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert not enc.trunk.training
    np.testing.assert_array_equal(enc.embed(batch), enc.embed(batch))


def test_feature_maps_can_feed_a_trainable_head() -> None:
    enc = tiny_encoder()
    fmap = enc.feature_maps(torch.randn(2, 3, 8, 8))
    assert not fmap.requires_grad
    head = nn.Linear(4, 1)
    head(fmap.mean(dim=(2, 3))).sum().backward()  # fails on inference-mode tensors
    assert head.weight.grad is not None


def test_numpy_batch_and_empty_batch() -> None:
    enc = tiny_encoder()
    batch = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(enc.embed(batch), enc.embed(torch.from_numpy(batch)), rtol=1e-6)
    assert enc.embed(torch.zeros(0, 3, 8, 8)).shape == (0, 4)


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 1, 8, 8), (2, 8, 8, 3)])
def test_bad_batch_shape_is_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        tiny_encoder().embed(torch.zeros(shape))


def test_non_tensor_batch_is_rejected() -> None:
    with pytest.raises(ValueError, match="must be a tensor"):
        tiny_encoder().embed([[0.0]])


def test_trunk_with_wrong_channel_count_is_reported() -> None:
    enc = tiny_encoder(dim=4)
    enc.dim = 5  # a builder bug: the declared dim does not match the trunk
    with pytest.raises(RuntimeError, match="expected"):
        enc.embed(torch.zeros(1, 3, 8, 8))


def test_fingerprint_names_weights_and_preprocessing() -> None:
    fp = tiny_encoder().fingerprint()
    assert fp["encoder"] == "tiny" and fp["weights"] == "random" and fp["dim"] == 4
    assert fp["preprocessing"]["input_size"] == 8
