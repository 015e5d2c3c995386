"""Training: the loss falls on a separable set, a seed fixes the run, thresholds are right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clothsim.training.trainer import (
    TrainConfig,
    choose_threshold,
    pair_accuracy,
    train_siamese,
)


def blobs(n: int, seed: int, dim: int = 16, classes: int = 3) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(100)
    centres = rng.normal(size=(classes, dim)) * 3
    rng = np.random.default_rng(seed)
    labels = rng.integers(classes, size=n)
    # Non-negative, as max-pooled ReLU features are.
    return np.abs(centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels.tolist()


CONFIG = TrainConfig(embedding_dim=8, dropout=0.1, epochs=6, batch_size=32, learning_rate=3e-3, patience=0, seed=5)


@pytest.fixture(scope="module")
def data():
    return blobs(120, seed=1), blobs(45, seed=2)


def test_training_lowers_the_loss_on_a_separable_set(data) -> None:
    (x, y), (vx, vy) = data
    result = train_siamese(x, y, vx, vy, CONFIG, progress=False)
    losses = [row["val_loss"] for row in result.history]
    assert len(result.history) == CONFIG.epochs
    assert losses[-1] < 0.6 * losses[0]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[result.best_epoch - 1]["val_accuracy"] > 0.9
    assert not result.model.training


def test_same_seed_same_run_bitwise(data) -> None:
    (x, y), (vx, vy) = data
    torch.manual_seed(123)  # the caller's global seed must not matter
    first = train_siamese(x, y, vx, vy, CONFIG, progress=False)
    torch.manual_seed(999)
    second = train_siamese(x, y, vx, vy, CONFIG, progress=False)
    assert first.history == second.history
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    other = train_siamese(x, y, vx, vy, TrainConfig(**{**CONFIG.to_dict(), "seed": 6}), progress=False)
    assert other.history != first.history


def test_early_stopping_restores_the_best_epoch(data) -> None:
    (x, y), (vx, vy) = data
    # A large learning rate with no decay makes the validation loss stall quickly.
    config = TrainConfig(**{**CONFIG.to_dict(), "epochs": 40, "patience": 2, "learning_rate": 0.05})
    result = train_siamese(x, y, vx, vy, config, progress=False)
    assert result.stopped_early and len(result.history) == result.best_epoch + 2
    best_val = min(row["val_loss"] for row in result.history)
    assert result.history[result.best_epoch - 1]["val_loss"] == best_val
    assert result.threshold == result.history[result.best_epoch - 1]["threshold"]


def test_choose_threshold_against_brute_force() -> None:
    rng = np.random.default_rng(4)
    d = np.round(rng.uniform(0, 2, 60), 1)  # ties on purpose
    y = (rng.uniform(size=60) < 1 - d / 2).astype(float)
    threshold, accuracy = choose_threshold(d, y)
    brute = max(pair_accuracy(d, y, t) for t in np.concatenate([[-1.0], np.unique(d) + 1e-9]))
    assert accuracy == pytest.approx(brute)
    assert pair_accuracy(d, y, threshold) == pytest.approx(accuracy)


def test_choose_threshold_separable() -> None:
    threshold, accuracy = choose_threshold(np.array([0.1, 0.2, 0.9, 1.1]), np.array([1, 1, 0, 0]))
    assert accuracy == 1.0 and threshold == pytest.approx(0.55)


def test_bad_inputs(data) -> None:
    (x, y), (vx, vy) = data
    with pytest.raises(ValueError, match="labels"):
        train_siamese(x, y[:-1], vx, vy, CONFIG, progress=False)
    with pytest.raises(ValueError, match="shape"):
        train_siamese(x, y, vx[:, :8], vy, CONFIG, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
