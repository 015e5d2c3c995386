"""The contrastive loss against a naive per-pair loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clothsim.training.losses import ContrastiveLoss


def naive_contrastive(distances: list[float], targets: list[float], margin: float) -> list[float]:
    out = []
    for d, y in zip(distances, targets):
        if y == 1:
            out.append(0.5 * d * d)
        else:
            gap = margin - d
            out.append(0.5 * (gap * gap if gap > 0 else 0.0))
    return out


@pytest.mark.parametrize("margin", [0.5, 1.0, 1.7])
def test_matches_naive_loop(margin: float) -> None:
    rng = np.random.default_rng(3)
    d = rng.uniform(0, 2, size=37)
    y = rng.integers(0, 2, size=37).astype(float)
    expected = naive_contrastive(d.tolist(), y.tolist(), margin)
    dist, target = torch.tensor(d, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    per_pair = ContrastiveLoss(margin, reduction="none")(dist, target)
    np.testing.assert_allclose(per_pair.numpy(), expected, rtol=1e-12)
    assert float(ContrastiveLoss(margin)(dist, target)) == pytest.approx(np.mean(expected), rel=1e-12)
    assert float(ContrastiveLoss(margin, reduction="sum")(dist, target)) == pytest.approx(np.sum(expected))


def test_far_negatives_cost_nothing_and_gradients_point_the_right_way() -> None:
    d = torch.tensor([0.3, 0.3, 1.5], requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.0])
    per = ContrastiveLoss(1.0, reduction="none")(d, y)
    assert float(per[2].detach()) == 0.0
    per.sum().backward()
    assert d.grad[0] > 0  # a similar pair: loss grows with distance
    assert d.grad[1] < 0  # a close dissimilar pair: loss falls as it moves apart
    assert d.grad[2] == 0


@pytest.mark.parametrize("kwargs", [{"margin": 0.0}, {"margin": -1.0}, {"reduction": "avg"}])
def test_bad_arguments(kwargs) -> None:
    with pytest.raises(ValueError):
        ContrastiveLoss(**kwargs)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        ContrastiveLoss()(torch.zeros(3), torch.zeros(4))
