"""The ensemble's arithmetic: pick a part's most category-discriminative columns, then mix the parts.

Pure numpy/scikit-learn functions of arrays, so they can be checked against a naive reference and
reused both when fitting (on cached features) and when encoding (on fresh ones).

Combination, for parts ``p_1..p_n`` (rows already restricted to their selected columns)::

    average:  normalise( sum_i w_i * normalise(p_i) )
    concat:   normalise( [sqrt(w_1) * normalise(p_1), ..., sqrt(w_n) * normalise(p_n)] )

Each part is normalised again after column selection because dropping columns shrinks the parts by
different amounts, which would otherwise skew the weights. In the concatenation the square roots
make the cosine of two combined vectors the ``w``-weighted mean of the parts' cosines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clothsim.encoders.base import l2_normalize
from clothsim.errors import DataError, UsageError

METHODS = ("average", "concat")


def select_columns(features: np.ndarray, labels: Any, k: int) -> np.ndarray:
    """The ``k`` columns with the highest ANOVA F-value against ``labels`` (scikit-learn's SelectKBest).

    Args:
        features: ``(n, d)`` training features.
        labels: ``(n,)`` category of each row (at least two categories).
        k: Columns to keep, ``1 <= k <= d``; ``k == d`` keeps every column.

    Returns:
        The chosen column numbers, ascending (int64).

    Raises:
        ValueError: On bad shapes, ``k`` out of range, or fewer than two categories.
    """
    from sklearn.feature_selection import SelectKBest, f_classif

    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (n, d), got shape {features.shape}")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels must have shape ({features.shape[0]},) (one per row), got {labels.shape}")
    if not 1 <= k <= features.shape[1]:
        raise ValueError(f"k must be between 1 and {features.shape[1]} (the number of columns), got {k}")
    if k == features.shape[1]:
        return np.arange(k, dtype=np.int64)
    if np.unique(labels).size < 2:
        raise DataError("column selection needs at least two categories in the training labels")
    selector = SelectKBest(f_classif, k=k)
    # Constant columns make f_classif divide by zero; SelectKBest ranks their NaN scores last.
    with np.errstate(divide="ignore", invalid="ignore"):
        selector.fit(features, labels)
    return np.flatnonzero(selector.get_support()).astype(np.int64)


def check_weights(weights: Sequence[float], n_parts: int) -> np.ndarray:
    """Part weights as a float64 array summing to 1.

    Raises:
        ValueError: Wrong count, a negative or non-finite weight, or all zeros.
    """
    values = np.asarray(list(weights), dtype=np.float64)
    if values.shape != (n_parts,):
        raise UsageError(f"expected {n_parts} part weights (one per part), got {values.size}")
    if not np.isfinite(values).all() or (values < 0).any():
        raise UsageError(f"part weights must be finite and non-negative, got {values.tolist()}")
    if values.sum() <= 0:
        raise UsageError("part weights are all zero; give at least one part a positive weight")
    return values / values.sum()


def combine(parts: Sequence[np.ndarray], weights: Sequence[float], method: str = "average") -> np.ndarray:
    """Mix already column-selected parts into unit-length vectors (formulas in the module docstring).

    Args:
        parts: One ``(n, d_i)`` array per part, rows aligned (row ``r`` is the same image in each).
        weights: One non-negative weight per part (rescaled to sum to 1).
        method: ``"average"`` (every ``d_i`` equal) or ``"concat"``.

    Returns:
        ``(n, d)`` float32, rows L2-normalised.

    Raises:
        ValueError: On an unknown method, misaligned rows, unequal sizes for ``average``, or bad weights.
    """
    if method not in METHODS:
        raise UsageError(f"method must be one of {METHODS}, got {method!r}")
    if not parts:
        raise ValueError("combine needs at least one part")
    arrays = [np.asarray(p, dtype=np.float32) for p in parts]
    for i, array in enumerate(arrays):
        if array.ndim != 2 or array.shape[0] != arrays[0].shape[0]:
            raise ValueError(f"part {i} has shape {array.shape}; every part needs ({arrays[0].shape[0]}, d) rows")
    w = check_weights(weights, len(arrays)).astype(np.float32)
    normalised = [l2_normalize(a) for a in arrays]
    if method == "average":
        dims = {a.shape[1] for a in arrays}
        if len(dims) != 1:
            raise ValueError(f"average needs parts of one size, got sizes {[a.shape[1] for a in arrays]}")
        mixed = sum(wi * a for wi, a in zip(w, normalised))
    else:
        mixed = np.concatenate([np.sqrt(wi) * a for wi, a in zip(w, normalised)], axis=1)
    return l2_normalize(np.asarray(mixed, dtype=np.float32))


def weight_grid(n_parts: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector on the simplex with entries that are multiples of ``step``.

    The uniform vector comes first when it is on the grid, so that ties in a search favour it.

    Raises:
        ValueError: ``step`` is not in ``(0, 1]`` or does not divide 1 into whole steps.
    """
    if not 0 < step <= 1:
        raise UsageError(f"grid step must be in (0, 1], got {step}")
    units = round(1 / step)
    if abs(units * step - 1) > 1e-9:
        raise UsageError(f"grid step must divide 1 into whole steps (e.g. 0.1, 0.05, 0.25), got {step}")

    def compositions(total: int, slots: int):
        if slots == 1:
            yield (total,)
            return
        for first in range(total, -1, -1):
            for rest in compositions(total - first, slots - 1):
                yield (first,) + rest

    grid = [tuple(c / units for c in combo) for combo in compositions(units, n_parts)]
    uniform = tuple([1 / n_parts] * n_parts)
    on_grid = [g for g in grid if np.allclose(g, uniform)]
    return on_grid + [g for g in grid if not np.allclose(g, uniform)]
