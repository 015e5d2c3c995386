"""Distance and similarity between Siamese embeddings, decided here once.

The network merges its two branches by the Euclidean distance ``d`` of their embeddings; the loss,
the pair-accuracy threshold, the encoder and the CLI all use the functions below, so "closer" and
"more similar" can never disagree.

The embeddings are L2-normalised inside the model, so ``d`` lies in ``[0, 2]`` and
``d**2 = 2 - 2 * cos``. The similarity shown to users is::

    similarity = 1 - d**2 / 4 = (1 + cos) / 2        in [0, 1], 1 for identical embeddings

It falls monotonically with ``d`` and rises monotonically with the cosine, so ranking a catalogue by
cosine similarity (what the index does) gives exactly the order of the Euclidean distances the
network was trained on; a cosine score from ``clothsim search`` converts with
:func:`similarity_from_cosine`.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

ArrayLike = TypeVar("ArrayLike", float, np.ndarray, torch.Tensor)

#: Largest distance between two L2-normalised embeddings.
MAX_DISTANCE = 2.0
# Keeps the gradient of sqrt finite when two embeddings coincide (a positive pair at distance 0).
_EPS = 1e-12


def euclidean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance of two ``(N, D)`` embedding batches, differentiable at 0.

    Raises:
        ValueError: the shapes differ or are not 2-D.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"embeddings must be two (N, D) tensors of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    return torch.sqrt(torch.clamp(((a - b) ** 2).sum(dim=1), min=0.0) + _EPS)


def similarity_from_distance(distance: ArrayLike) -> ArrayLike:
    """``1 - d**2 / 4`` clipped to ``[0, 1]``: the score users see for a pair at distance ``d``."""
    if isinstance(distance, torch.Tensor):
        return torch.clamp(1.0 - distance**2 / 4.0, 0.0, 1.0)
    result = np.clip(1.0 - np.asarray(distance, dtype=np.float64) ** 2 / 4.0, 0.0, 1.0)
    return float(result) if np.ndim(result) == 0 else result


def distance_from_similarity(similarity: ArrayLike) -> ArrayLike:
    """Inverse of :func:`similarity_from_distance` on ``[0, 1]`` (e.g. a threshold as a distance)."""
    if isinstance(similarity, torch.Tensor):
        return 2.0 * torch.sqrt(torch.clamp(1.0 - similarity, min=0.0))
    result = 2.0 * np.sqrt(np.clip(1.0 - np.asarray(similarity, dtype=np.float64), 0.0, None))
    return float(result) if np.ndim(result) == 0 else result


def similarity_from_cosine(cosine: ArrayLike) -> ArrayLike:
    """The same score from a cosine similarity of L2-normalised embeddings: ``(1 + cos) / 2``."""
    if isinstance(cosine, torch.Tensor):
        return torch.clamp((1.0 + cosine) / 2.0, 0.0, 1.0)
    result = np.clip((1.0 + np.asarray(cosine, dtype=np.float64)) / 2.0, 0.0, 1.0)
    return float(result) if np.ndim(result) == 0 else result
