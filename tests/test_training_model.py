"""The Siamese network: one shared branch, max pooling, unit-length embeddings."""

from __future__ import annotations

import pytest
import torch

from clothsim.training.model import (
    BranchConfig,
    EmbeddingBranch,
    SiameseNetwork,
    global_max_pool,
)


def _net(**kwargs) -> SiameseNetwork:
    torch.manual_seed(0)
    return SiameseNetwork(BranchConfig(in_channels=6, embedding_dim=4, **kwargs))


def test_branches_are_one_parameter_set() -> None:
    net = _net(dropout=0.0)
    branch_params = list(net.branch.parameters())
    assert [id(p) for p in net.parameters()] == [id(p) for p in branch_params]
    assert sum(isinstance(m, EmbeddingBranch) for m in net.modules()) == 1

    a, b = torch.randn(5, 6), torch.randn(5, 6)
    net(a, b).sum().backward()
    both = net.branch.dense.weight.grad.clone()

    # The shared weight's gradient is the sum of what each side contributes, accumulated once.
    grads = []
    for side in ("a", "b"):
        net.zero_grad()
        ea = net.embed(a) if side == "a" else net.embed(a).detach()
        eb = net.embed(b) if side == "b" else net.embed(b).detach()
        torch.sqrt(((ea - eb) ** 2).sum(1) + 1e-12).sum().backward()
        grads.append(net.branch.dense.weight.grad.clone())
    torch.testing.assert_close(both, grads[0] + grads[1])


def test_swapping_sides_gives_the_same_distance() -> None:
    net = _net().eval()
    a, b = torch.randn(3, 6), torch.randn(3, 6)
    torch.testing.assert_close(net(a, b), net(b, a))
    torch.testing.assert_close(net(a, a), torch.zeros(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm, activation", [("none", "none"), ("batchnorm", "relu"), ("layernorm", "tanh")])
def test_embeddings_are_unit_length(norm: str, activation: str) -> None:
    net = _net(norm=norm, activation=activation).eval()
    emb = net.embed(torch.randn(7, 6))
    assert emb.shape == (7, 4)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(7))
    assert float(net(torch.randn(7, 6), torch.randn(7, 6)).detach().max()) <= 2.0 + 1e-5


def test_maps_and_pooled_rows_give_the_same_embedding() -> None:
    net = _net().eval()
    maps = torch.randn(3, 6, 7, 7)
    torch.testing.assert_close(net.embed(maps), net.embed(global_max_pool(maps)))
    torch.testing.assert_close(global_max_pool(maps)[1, 2], maps[1, 2].max())


@pytest.mark.parametrize("kwargs", [{"dropout": 1.0}, {"norm": "groupnorm"}, {"activation": "gelu"},
                                    {"embedding_dim": 0}])
def test_bad_config(kwargs) -> None:
    with pytest.raises(ValueError):
        BranchConfig(**kwargs)


def test_bad_inputs() -> None:
    net = _net()
    with pytest.raises(ValueError, match="channels"):
        net.embed(torch.randn(2, 5))
    with pytest.raises(ValueError, match="equal counts"):
        net(torch.randn(2, 6), torch.randn(3, 6))
    with pytest.raises(ValueError, match="maps"):
        net.embed(torch.randn(2, 6, 3))
