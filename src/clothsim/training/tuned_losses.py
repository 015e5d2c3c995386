"""The metric-learning losses a tuned encoder can train with, from pytorch-metric-learning.

Every loss sees unit-length embeddings and measures them by cosine similarity (the index's score), so
what the loss calls close is what search ranks first.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from clothsim.defaults import DEFAULT_TUNE_LOSS
from clothsim.errors import UsageError

LOSSES = ("multi-similarity", "contrastive", "proxy-anchor", "normalized-softmax")
DEFAULT_LOSS = DEFAULT_TUNE_LOSS
INSTALL_HINT = "pip install pytorch-metric-learning"


class MetricLoss(nn.Module):
    """``loss(embeddings, labels)``: a pytorch-metric-learning loss and, where it has one, its miner.

    Proxy losses (proxy-anchor, normalized-softmax) have parameters of their own, trained with the head.
    """

    def __init__(self, loss: nn.Module, miner: Any = None) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, embeddings: Any, labels: Any) -> Any:
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, pairs)


def build_loss(name: str, num_classes: int, embedding_dim: int) -> MetricLoss:
    """The loss called ``name`` (one of :data:`LOSSES`).

    Raises:
        UsageError: unknown name, or pytorch-metric-learning is not installed (says the pip line).
    """
    if name not in LOSSES:
        raise UsageError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    try:
        from pytorch_metric_learning import distances, losses, miners
    except ImportError as exc:
        raise UsageError(f"training a tuned encoder needs pytorch-metric-learning: {INSTALL_HINT}") from exc
    cosine = distances.CosineSimilarity()
    if name == "multi-similarity":
        # The published defaults (Wang et al. 2019): alpha 2, beta 50, base 0.5, mining margin 0.1.
        return MetricLoss(losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5, distance=cosine),
                          miners.MultiSimilarityMiner(epsilon=0.1, distance=cosine))
    if name == "contrastive":
        # The study's loss on unit vectors: positives pulled together, negatives pushed past cos 0.5.
        return MetricLoss(losses.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5, distance=cosine))
    if name == "proxy-anchor":
        return MetricLoss(losses.ProxyAnchorLoss(num_classes, embedding_dim, margin=0.1, alpha=32))
    return MetricLoss(losses.NormalizedSoftmaxLoss(num_classes, embedding_dim, temperature=0.05))
