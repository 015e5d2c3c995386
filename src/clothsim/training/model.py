"""The Siamese network: one embedding branch applied to both images, merged by Euclidean distance.

A branch is global max pooling of a CNN feature map (e.g. VGG16 conv5, ``(N, 512, 7, 7)``), a flatten,
then a dense layer with optional dropout before it and normalisation / activation after it, and a
final L2 normalisation. The two "branches" of the Siamese pair are the same module object, so they
share one set of weights by construction.

The final L2 normalisation is there so that Euclidean distance and cosine similarity rank alike
(``d**2 = 2 - 2 cos``): the cosine index used by ``clothsim search`` then returns exactly the
neighbours the network was trained to bring close.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from clothsim.defaults import DEFAULT_SIAMESE_DROPOUT, DEFAULT_SIAMESE_EMBEDDING_DIM
from clothsim.training.distance import euclidean_distance
from clothsim.errors import UsageError

NORMS = ("none", "batchnorm", "layernorm")
ACTIVATIONS = ("none", "relu", "tanh")


@dataclass(frozen=True)
class BranchConfig:
    """Shape of one embedding branch.

    Attributes:
        in_channels: Channels of the input feature map (512 for VGG16 conv5).
        embedding_dim: Size of the embedding.
        dropout: Dropout probability on the pooled features, before the dense layer.
        norm: ``"none"``, ``"batchnorm"`` or ``"layernorm"`` after the dense layer.
        activation: ``"none"``, ``"relu"`` or ``"tanh"`` after the normalisation.
    """

    in_channels: int = 512
    embedding_dim: int = DEFAULT_SIAMESE_EMBEDDING_DIM
    dropout: float = DEFAULT_SIAMESE_DROPOUT
    norm: str = "none"
    activation: str = "none"

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.embedding_dim < 1:
            raise UsageError(f"in_channels and embedding_dim must be >= 1, got {self.in_channels}, "
                             f"{self.embedding_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise UsageError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def global_max_pool(features: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` maps -> ``(N, C)``; ``(N, C)`` rows (already pooled) pass through."""
    if features.ndim == 4:
        return torch.amax(features, dim=(2, 3))
    if features.ndim == 2:
        return features
    raise ValueError(f"features must be (N, C, H, W) maps or (N, C) pooled rows, got {tuple(features.shape)}")


class EmbeddingBranch(nn.Module):
    """Max pooling, flatten, dropout, dense, norm, activation, L2 normalisation."""

    def __init__(self, config: BranchConfig) -> None:
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout)
        self.dense = nn.Linear(config.in_channels, config.embedding_dim)
        if config.norm == "batchnorm":
            self.norm: nn.Module = nn.BatchNorm1d(config.embedding_dim)
        elif config.norm == "layernorm":
            self.norm = nn.LayerNorm(config.embedding_dim)
        else:
            self.norm = nn.Identity()
        self.activation = {"none": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh}[config.activation]()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Feature maps ``(N, C, H, W)`` or max-pooled rows ``(N, C)`` -> ``(N, embedding_dim)`` unit rows."""
        pooled = torch.flatten(global_max_pool(features), 1)
        if pooled.shape[1] != self.config.in_channels:
            raise ValueError(f"expected {self.config.in_channels} channels, got {pooled.shape[1]}")
        x = self.activation(self.norm(self.dense(self.dropout(pooled))))
        return nn.functional.normalize(x, p=2.0, dim=1)


class SiameseNetwork(nn.Module):
    """Two applications of one :class:`EmbeddingBranch`, merged by the Euclidean distance.

    ``forward(a, b)`` returns the ``(N,)`` distances; :meth:`embed` the embeddings of one side.
    """

    def __init__(self, config: BranchConfig) -> None:
        super().__init__()
        self.config = config
        self.branch = EmbeddingBranch(config)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.branch(features)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"the two sides hold {a.shape[0]} and {b.shape[0]} items; pairs need equal counts")
        # One forward over both sides: the same weights by construction, and batchnorm sees one batch.
        both = self.branch(torch.cat([a, b], dim=0))
        return euclidean_distance(both[: a.shape[0]], both[a.shape[0]:])
