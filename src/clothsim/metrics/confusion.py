"""Top-1 category confusion: which category the nearest neighbour has, per true category."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from clothsim.metrics._checks import as_label_vector, check_comparable


def confusion_top1(
    query_labels: Any, top1_labels: Any, categories: Sequence[Any] | None = None
) -> tuple[np.ndarray, list[Any]]:
    """Count (true category, category of the top-1 neighbour) pairs.

    Args:
        query_labels: ``(q,)`` true category of each query.
        top1_labels: ``(q,)`` category of each query's nearest neighbour
            (column 0 of a ranked label matrix).
        categories: Row/column order; by default the sorted union of both label sets.

    Returns:
        ``(matrix, categories)``: ``matrix[i, j]`` is the number of queries of ``categories[i]``
        whose nearest neighbour is of ``categories[j]`` (int64, shape ``(c, c)``); the diagonal holds
        the top-1 hits. ``categories`` is a list of plain Python values.

    Raises:
        ValueError: On bad shapes, incomparable labels, repeated categories, or a label missing
            from ``categories``.
    """
    truth = as_label_vector("query_labels", query_labels)
    predicted = as_label_vector("top1_labels", top1_labels)
    if truth.shape != predicted.shape:
        raise ValueError(f"query_labels has {truth.shape[0]} labels but top1_labels has {predicted.shape[0]}")
    check_comparable("query_labels", truth, "top1_labels", predicted)
    if categories is None:
        try:
            order = sorted(set(truth.tolist()) | set(predicted.tolist()))
        except TypeError as exc:  # e.g. str mixed with int in an object array
            raise ValueError(f"labels cannot be sorted into categories: {exc}") from exc
    else:
        order = list(np.asarray(categories).tolist()) if not isinstance(categories, list) else list(categories)
        if len(set(order)) != len(order):
            raise ValueError(f"categories has repeated entries: {order}")
    position = {category: i for i, category in enumerate(order)}
    truth_list, predicted_list = truth.tolist(), predicted.tolist()
    for name, labels in (("query_labels", truth_list), ("top1_labels", predicted_list)):
        unknown = [i for i, label in enumerate(labels) if label not in position]
        if unknown:
            raise ValueError(f"{name}[{unknown[0]}] = {labels[unknown[0]]!r} is not one of categories")
    rows = np.fromiter((position[label] for label in truth_list), dtype=np.int64, count=len(truth_list))
    cols = np.fromiter((position[label] for label in predicted_list), dtype=np.int64, count=len(predicted_list))
    matrix = np.zeros((len(order), len(order)), dtype=np.int64)
    np.add.at(matrix, (rows, cols), 1)
    return matrix, order
