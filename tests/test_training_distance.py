"""Similarity from distance, decided once: range, monotonicity, agreement with cosine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clothsim.training.distance import (
    distance_from_similarity,
    euclidean_distance,
    similarity_from_cosine,
    similarity_from_distance,
)


def test_similarity_is_monotone_in_unit_interval_and_invertible() -> None:
    d = np.linspace(0, 2, 101)
    s = similarity_from_distance(d)
    assert s[0] == 1.0 and s[-1] == 0.0
    assert np.all(np.diff(s) < 0)
    np.testing.assert_allclose(distance_from_similarity(s), d, atol=1e-9)
    assert similarity_from_distance(5.0) == 0.0  # clipped, and a float in, a float out


def test_tensor_and_numpy_agree() -> None:
    d = torch.linspace(0, 2, 9, dtype=torch.float64)
    np.testing.assert_allclose(similarity_from_distance(d).numpy(), similarity_from_distance(d.numpy()))


def test_similarity_from_cosine_matches_distance_of_unit_vectors() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 8))
    b = rng.normal(size=(20, 8))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    d = euclidean_distance(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    cos = (a * b).sum(axis=1)
    np.testing.assert_allclose(similarity_from_distance(d), similarity_from_cosine(cos), atol=1e-9)
    # So ranking by cosine and by distance is the same ranking.
    assert list(np.argsort(-cos)) == list(np.argsort(d))


def test_euclidean_distance_is_finite_with_gradient_at_zero() -> None:
    a = torch.ones(2, 3, requires_grad=True)
    d = euclidean_distance(a, torch.ones(2, 3))
    d.sum().backward()
    assert torch.all(torch.isfinite(a.grad))
    assert float(d.detach().max()) < 1e-5


def test_euclidean_distance_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        euclidean_distance(torch.zeros(2, 3), torch.zeros(2, 4))
