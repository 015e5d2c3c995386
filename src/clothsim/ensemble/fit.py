"""Fitting an ensemble on the training split (and choosing its weights on the validation split).

Only ``train`` rows decide the kept columns, only ``validation`` rows (queried against ``train``)
decide the weights; rows of any other split are refused, so nothing of the test split can leak in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clothsim.defaults import DEFAULT_ENSEMBLE_GRID_STEP, DEFAULT_ENSEMBLE_METHOD
from clothsim.data.records import CatalogRecord
from clothsim.ensemble.combine import (
    METHODS,
    check_weights,
    combine,
    select_columns,
    weight_grid,
)
from clothsim.ensemble.model import EnsembleModel, PartSpec
from clothsim.metrics import precision_at_k_per_query, rank
from clothsim.errors import DataError, UsageError

logger = logging.getLogger(__name__)

FIT_SPLITS = ("train", "validation")


def _validation_precision(
    train: Sequence[np.ndarray], train_labels: np.ndarray, val: Sequence[np.ndarray], val_labels: np.ndarray,
    weights: Sequence[float], method: str, k: int,
) -> float:
    gallery = combine(train, weights, method)
    queries = combine(val, weights, method)
    rows, _ = rank(queries, gallery, k, normalize=False)
    return float(precision_at_k_per_query(val_labels, train_labels[rows], k).mean())


def search_weights(
    train: Sequence[np.ndarray],
    train_labels: Any,
    validation: Sequence[np.ndarray],
    validation_labels: Any,
    method: str = DEFAULT_ENSEMBLE_METHOD,
    grid_step: float = DEFAULT_ENSEMBLE_GRID_STEP,
    k: int = 5,
) -> tuple[tuple[float, ...], list[dict[str, Any]]]:
    """Grid-search the part weights that maximise precision@k of validation queries against train.

    Args:
        train: Per part, the column-selected ``(n_train, d_i)`` training vectors.
        train_labels: ``(n_train,)`` categories.
        validation: Per part, the column-selected validation vectors.
        validation_labels: ``(n_val,)`` categories.
        method: Combination method.
        grid_step: Weight grid spacing (see :func:`~clothsim.ensemble.combine.weight_grid`).
        k: Precision cut-off.

    Returns:
        ``(best weights, table)``; the table lists ``{"weights", "precision"}`` for every grid point.
        Ties go to the earlier grid point (the uniform weights come first).
    """
    train_labels, validation_labels = np.asarray(train_labels), np.asarray(validation_labels)
    table = []
    for weights in weight_grid(len(train), grid_step):
        score = _validation_precision(train, train_labels, validation, validation_labels, weights, method, k)
        table.append({"weights": [round(w, 6) for w in weights], "precision": score})
    best = max(range(len(table)), key=lambda i: (table[i]["precision"], -i))
    logger.info("weight search: best %s with validation P@%d %.4f", table[best]["weights"], k,
                table[best]["precision"])
    return tuple(table[best]["weights"]), table


def fit_ensemble(
    parts: Sequence[PartSpec],
    records: Sequence[CatalogRecord],
    part_vectors: Sequence[np.ndarray],
    *,
    weights: Sequence[float] | None = None,
    method: str = DEFAULT_ENSEMBLE_METHOD,
    grid_step: float = DEFAULT_ENSEMBLE_GRID_STEP,
    search_k: int = 5,
) -> EnsembleModel:
    """Fit an ensemble from the parts' features of training (and validation) images.

    Each part larger than the smallest is cut to the smallest one's size by ANOVA-F column
    selection against the train rows' categories. Weights are ``weights`` when given; otherwise the
    grid search of :func:`search_weights` on the validation rows, or equal weights when there are none.

    Args:
        parts: The parts, in order.
        records: One record per row, each of split ``train`` or ``validation``.
        part_vectors: Per part, ``(len(records), part.dim)`` vectors, row ``r`` encoding ``records[r]``.
        weights: Fixed part weights, or ``None`` to choose them.
        method: ``"average"`` or ``"concat"``.
        grid_step: Spacing of the weight search grid.
        search_k: The search maximises validation precision at this cut-off.

    Raises:
        ValueError: A record outside train/validation, misaligned vectors, no train rows, or bad weights.
    """
    if method not in METHODS:
        raise UsageError(f"method must be one of {METHODS}, got {method!r}")
    if len(parts) < 2:
        raise UsageError(f"an ensemble needs at least two parts, got {len(parts)}")
    if len(part_vectors) != len(parts):
        raise ValueError(f"{len(parts)} parts but vectors for {len(part_vectors)}")
    for i, record in enumerate(records):
        if record.split not in FIT_SPLITS:
            raise ValueError(f"records[{i}] ({record.path}) is in split {record.split!r}; an ensemble is fitted "
                             f"only on {' and '.join(FIT_SPLITS)} images, so test images cannot leak into it")
    arrays = []
    for part, vectors in zip(parts, part_vectors):
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(records), part.dim):
            raise ValueError(f"part {part.name}: vectors must have shape ({len(records)}, {part.dim}), "
                             f"got {vectors.shape}")
        arrays.append(vectors)
    splits = np.array([r.split for r in records])
    labels = np.array([r.category for r in records])
    train, val = splits == "train", splits == "validation"
    if not train.any():
        raise DataError("no train records: the column selection is fitted on the train split")

    k = min(p.dim for p in parts)
    columns = tuple(select_columns(a[train], labels[train], k) for a in arrays)
    selected = [a[:, cols] for a, cols in zip(arrays, columns)]
    info: dict[str, Any] = {"n_train": int(train.sum()), "n_validation": int(val.sum()),
                            "categories": sorted(set(labels[train].tolist()))}
    if weights is not None:
        chosen = tuple(float(w) for w in check_weights(weights, len(parts)))
        info["weights_chosen_by"] = "given"
    elif val.any():
        chosen, table = search_weights([s[train] for s in selected], labels[train], [s[val] for s in selected],
                                       labels[val], method, grid_step, search_k)
        info["weights_chosen_by"] = f"grid search (step {grid_step}) maximising validation P@{search_k}"
        info["search"] = table
    else:
        logger.warning("no validation records: using equal part weights")
        chosen = tuple([1.0 / len(parts)] * len(parts))
        info["weights_chosen_by"] = "equal (no validation split to search on)"
    return EnsembleModel(tuple(parts), columns, chosen, method, info)


def aligned_vectors(stores: Sequence[Path | str]) -> tuple[list[CatalogRecord], list[np.ndarray]]:
    """Rows present in every store (matched by image path, in the first store's order) and their vectors.

    Images one part failed to decode are dropped for all parts, so rows stay aligned.
    """
    from clothsim.features.store import FeatureStore

    loaded = [FeatureStore.open(s).load_vectors() for s in stores]
    common = set.intersection(*({it.record.path for it in items} for _, items in loaded))
    order = [it.record for it in loaded[0][1] if it.record.path in common]
    vectors = []
    for matrix, items in loaded:
        row = {it.record.path: i for i, it in enumerate(items)}
        vectors.append(matrix[[row[r.path] for r in order]] if order else matrix[:0])
    return order, vectors
