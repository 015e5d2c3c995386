"""The contrastive loss (Hadsell, Chopra and LeCun, 2006) over pair distances.

For a pair at Euclidean distance ``d`` with target ``y`` (1 similar, 0 dissimilar) and margin ``m``::

    loss = 0.5 * (y * d**2 + (1 - y) * max(0, m - d)**2)

halved as in the original paper, then averaged over the pairs of a batch (``reduction="mean"``) or
summed. Similar pairs are pulled together; dissimilar ones are pushed apart until they are ``m`` away,
after which they cost nothing. With L2-normalised embeddings distances lie in ``[0, 2]``, so useful
margins lie in ``(0, 2]``.
"""

from __future__ import annotations

import torch
from torch import nn


class ContrastiveLoss(nn.Module):
    """Contrastive loss over precomputed distances.

    Args:
        margin: Distance beyond which a dissimilar pair costs nothing; must be positive.
        reduction: ``"mean"`` over pairs, ``"sum"``, or ``"none"`` for the per-pair losses.
    """

    def __init__(self, margin: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if not margin > 0:
            raise ValueError(f"margin must be positive, got {margin}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.margin = float(margin)
        self.reduction = reduction

    def forward(self, distance: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of pairs at ``distance`` (shape ``(N,)``) with ``target`` 1 (similar) or 0."""
        if distance.ndim != 1 or distance.shape != target.shape:
            raise ValueError(f"distance and target must be (N,) tensors of one shape, got "
                             f"{tuple(distance.shape)} and {tuple(target.shape)}")
        target = target.to(distance.dtype)
        per_pair = 0.5 * (target * distance**2 + (1.0 - target) * torch.clamp(self.margin - distance, min=0.0) ** 2)
        if self.reduction == "mean":
            return per_pair.mean()
        if self.reduction == "sum":
            return per_pair.sum()
        return per_pair

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"
