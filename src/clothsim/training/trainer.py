"""Training loop of the Siamese head on precomputed (max-pooled) feature maps.

Global max pooling has no parameters, so training on the pooled ``(N, 512)`` rows is exactly training
on the ``(N, 512, 7, 7)`` maps, at a fraction of the cost: an epoch over clothing-dataset-small takes
well under a second on a CPU. Pairs are resampled every epoch (seeded by ``(seed, epoch)``); the
validation pairs are drawn once so that epochs are comparable.

Per epoch the history records:

* ``train_loss``: mean contrastive loss over the epoch's batches, in training mode (dropout on);
* ``val_loss``: the same on the validation pairs, in evaluation mode;
* ``threshold``: the distance that best separates similar from dissimilar validation pairs
  (``threshold_similarity`` is the same cut as a similarity, see :mod:`clothsim.training.distance`);
* ``train_accuracy`` / ``val_accuracy``: share of pairs classified right by ``distance < threshold``
  (train distances as computed during the epoch).

Early stopping watches ``val_loss``; the weights of the best epoch are restored and kept with that
epoch's threshold. Everything random is seeded, so one seed gives bitwise the same run on one machine.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clothsim.defaults import (
    DEFAULT_SEED,
    DEFAULT_SIAMESE_DROPOUT,
    DEFAULT_SIAMESE_EMBEDDING_DIM,
    DEFAULT_SIAMESE_EPOCHS,
    DEFAULT_SIAMESE_LR,
    DEFAULT_SIAMESE_MARGIN,
    DEFAULT_SIAMESE_NEGATIVE_RATIO,
    DEFAULT_SIAMESE_PAIR_BATCH,
    DEFAULT_SIAMESE_PATIENCE,
    DEFAULT_SIAMESE_WEIGHT_DECAY,
    DEFAULT_VAL_FRACTION,
)
from clothsim.training.distance import similarity_from_distance
from clothsim.training.losses import ContrastiveLoss
from clothsim.training.model import BranchConfig, SiameseNetwork
from clothsim.training.pairs import PairSet, make_pairs
from clothsim.errors import UsageError

logger = logging.getLogger(__name__)

# Offsets the validation pairs' seed from every training epoch's seed.
_VAL_STREAM = 1_000_003


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a Siamese training run (saved with the checkpoint).

    Attributes:
        embedding_dim: Size of the embedding.
        dropout: Dropout before the dense layer.
        norm: ``"none"``, ``"batchnorm"`` or ``"layernorm"`` after the dense layer.
        activation: ``"none"``, ``"relu"`` or ``"tanh"``.
        margin: Contrastive-loss margin (embeddings are unit vectors: distances lie in [0, 2]).
        negative_ratio: Dissimilar pairs per similar pair.
        pair_rule: ``"category"`` or ``"category+attributes"`` (see :mod:`clothsim.training.pairs`).
        epochs: Most epochs to run.
        batch_size: Pairs per optimiser step.
        learning_rate: Adam learning rate.
        weight_decay: Adam weight decay (L2).
        patience: Stop after this many epochs without a lower validation loss (0: never stop early).
        val_fraction: Share of each training category held out for validation when the data has no
            validation split.
        seed: Seeds pairs, initialisation, dropout and the validation carve.
    """

    embedding_dim: int = DEFAULT_SIAMESE_EMBEDDING_DIM
    dropout: float = DEFAULT_SIAMESE_DROPOUT
    norm: str = "none"
    activation: str = "none"
    margin: float = DEFAULT_SIAMESE_MARGIN
    negative_ratio: float = DEFAULT_SIAMESE_NEGATIVE_RATIO
    pair_rule: str = "category"
    epochs: int = DEFAULT_SIAMESE_EPOCHS
    batch_size: int = DEFAULT_SIAMESE_PAIR_BATCH
    learning_rate: float = DEFAULT_SIAMESE_LR
    weight_decay: float = DEFAULT_SIAMESE_WEIGHT_DECAY
    patience: int = DEFAULT_SIAMESE_PATIENCE
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise UsageError(f"patience must be >= 0, got {self.patience}")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise UsageError(f"learning_rate must be > 0 and weight_decay >= 0, got {self.learning_rate}, "
                             f"{self.weight_decay}")
        if not 0.0 < self.val_fraction < 1.0:
            raise UsageError(f"val_fraction must be strictly between 0 and 1, got {self.val_fraction}")

    def branch(self, in_channels: int) -> BranchConfig:
        return BranchConfig(in_channels=in_channels, embedding_dim=self.embedding_dim, dropout=self.dropout,
                            norm=self.norm, activation=self.activation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainResult:
    """A trained network, its per-epoch history and its decision threshold (a distance)."""

    model: SiameseNetwork
    history: list[dict[str, float]]
    best_epoch: int
    threshold: float
    config: TrainConfig
    stopped_early: bool = False
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def choose_threshold(distances: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """The distance cut maximising pair accuracy (``distance < t`` means similar), and that accuracy.

    Every cut between two consecutive sorted distances is tried; the cut is placed midway. Ties in
    accuracy go to the smallest cut.
    """
    distances = np.asarray(distances, dtype=np.float64).ravel()
    targets = np.asarray(targets, dtype=np.float64).ravel()
    if distances.shape != targets.shape or distances.size == 0:
        raise ValueError(f"distances and targets must be non-empty and aligned, got {distances.shape} and "
                         f"{targets.shape}")
    order = np.argsort(distances, kind="stable")
    d, y = distances[order], targets[order]
    # Cut k: the first k (closest) pairs are called similar.
    pos_below = np.concatenate([[0.0], np.cumsum(y)])
    neg_above = (1.0 - y).sum() - np.concatenate([[0.0], np.cumsum(1.0 - y)])
    correct = pos_below + neg_above
    # Cuts inside a run of equal distances cannot be realised; rule them out.
    realisable = np.ones(len(d) + 1, dtype=bool)
    realisable[1:-1] = d[1:] > d[:-1]
    correct[~realisable] = -1.0
    k = int(np.argmax(correct))
    if k == 0:
        threshold = float(d[0]) - 1e-6
    elif k == len(d):
        threshold = float(d[-1]) + 1e-6
    else:
        threshold = float((d[k - 1] + d[k]) / 2.0)
    return threshold, float(correct[k] / len(d))


def pair_accuracy(distances: np.ndarray, targets: np.ndarray, threshold: float) -> float:
    """Share of pairs with ``(distance < threshold) == target``."""
    distances = np.asarray(distances, dtype=np.float64)
    return float(np.mean((distances < threshold) == (np.asarray(targets) > 0.5)))


def _distances(model: SiameseNetwork, x: torch.Tensor, pairs: PairSet, batch_size: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for lo in range(0, len(pairs), batch_size):
            left = torch.from_numpy(pairs.left[lo:lo + batch_size])
            right = torch.from_numpy(pairs.right[lo:lo + batch_size])
            out.append(model(x[left], x[right]))
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def _check_inputs(name: str, x: np.ndarray, labels: Sequence[Hashable]) -> torch.Tensor:
    x = np.asarray(x)
    if x.ndim not in (2, 4):
        raise ValueError(f"{name}: features must be (N, C) pooled rows or (N, C, H, W) maps, got {x.shape}")
    if x.shape[0] != len(labels):
        raise ValueError(f"{name}: {x.shape[0]} feature rows but {len(labels)} labels")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def train_siamese(
    train_features: np.ndarray,
    train_labels: Sequence[Hashable],
    val_features: np.ndarray,
    val_labels: Sequence[Hashable],
    config: TrainConfig | None = None,
    *,
    train_attributes: Sequence[Sequence[Hashable]] | None = None,
    val_attributes: Sequence[Sequence[Hashable]] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a Siamese network with the contrastive loss, with early stopping on validation loss.

    Args:
        train_features: ``(N, C)`` max-pooled features (or ``(N, C, H, W)`` maps) of the training items.
        train_labels: Their categories.
        val_features: Same for the validation items.
        val_labels: Their categories.
        config: Hyper-parameters (defaults of :class:`TrainConfig` when ``None``).
        train_attributes: Per-item attributes, for ``pair_rule="category+attributes"``.
        val_attributes: Same for validation.
        progress: Show a progress bar over epochs.

    Returns:
        The network with the best epoch's weights, in evaluation mode, with history and threshold.
    """
    config = config or TrainConfig()
    x_train = _check_inputs("train", train_features, train_labels)
    x_val = _check_inputs("validation", val_features, val_labels)
    if x_train.shape[1:] != x_val.shape[1:]:
        raise ValueError(f"train and validation features differ in shape: {tuple(x_train.shape[1:])} vs "
                         f"{tuple(x_val.shape[1:])}")
    started = time.perf_counter()
    val_pairs = make_pairs(val_labels, negative_ratio=config.negative_ratio, seed=config.seed + _VAL_STREAM,
                           attributes=val_attributes, rule=config.pair_rule)
    criterion = ContrastiveLoss(config.margin)
    history: list[dict[str, float]] = []
    # A private RNG state: the run is reproducible whatever the caller did with torch's global seed,
    # and the caller's state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SiameseNetwork(config.branch(int(x_train.shape[1])))
        optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        best = (float("inf"), 0, copy.deepcopy(model.state_dict()), 0.0)
        stale = 0
        bar = tqdm(range(1, config.epochs + 1), unit="epoch", desc="training siamese", disable=not progress)
        for epoch in bar:
            pairs = make_pairs(train_labels, negative_ratio=config.negative_ratio,
                               seed=np.random.default_rng([config.seed, epoch]),
                               attributes=train_attributes, rule=config.pair_rule)
            model.train()
            total, seen, train_d = 0.0, 0, []
            for lo in range(0, len(pairs), config.batch_size):
                left = torch.from_numpy(pairs.left[lo:lo + config.batch_size])
                right = torch.from_numpy(pairs.right[lo:lo + config.batch_size])
                target = torch.from_numpy(pairs.target[lo:lo + config.batch_size])
                if len(target) < 2 and config.norm == "batchnorm":
                    continue  # batchnorm cannot train on one pair
                distance = model(x_train[left], x_train[right])
                loss = criterion(distance, target)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(target)
                seen += len(target)
                train_d.append(distance.detach().numpy())
            model.eval()
            val_d = _distances(model, x_val, val_pairs, 4096)
            val_loss = float(criterion(torch.from_numpy(val_d), torch.from_numpy(val_pairs.target)))
            threshold, val_acc = choose_threshold(val_d, val_pairs.target)
            train_targets = pairs.target[: len(np.concatenate(train_d))] if train_d else pairs.target[:0]
            row = {
                "epoch": epoch,
                "train_loss": total / max(seen, 1),
                "val_loss": val_loss,
                "train_accuracy": pair_accuracy(np.concatenate(train_d), train_targets, threshold) if train_d
                else float("nan"),
                "val_accuracy": val_acc,
                "threshold": threshold,
                "threshold_similarity": float(similarity_from_distance(threshold)),
            }
            history.append(row)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", val=f"{val_loss:.4f}", acc=f"{val_acc:.3f}")
            logger.info("epoch %d: train loss %.4f, val loss %.4f, train acc %.3f, val acc %.3f", epoch,
                        row["train_loss"], val_loss, row["train_accuracy"], val_acc)
            if val_loss < best[0]:
                best = (val_loss, epoch, copy.deepcopy(model.state_dict()), threshold)
                stale = 0
            else:
                stale += 1
                if config.patience and stale >= config.patience:
                    logger.info("early stop at epoch %d: no lower validation loss since epoch %d", epoch, best[1])
                    break
        bar.close()
    model.load_state_dict(best[2])
    model.eval()
    stopped = len(history) < config.epochs
    return TrainResult(model, history, best_epoch=best[1], threshold=best[3], config=config, stopped_early=stopped,
                       seconds=time.perf_counter() - started)
