"""Argument checks shared by the metric functions (internal)."""

from __future__ import annotations

from typing import Any

import numpy as np

_STRING_KINDS = frozenset("USO")
_NUMBER_KINDS = frozenset("biuf")


def check_k(name: str, k: Any) -> int:
    """Return ``k`` as a Python int, or raise ``ValueError`` unless it is an integer of at least 1."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {k!r}")
    if k < 1:
        raise ValueError(f"{name} must be at least 1, got {k}")
    return int(k)


def as_label_vector(name: str, values: Any) -> np.ndarray:
    """One label per row as a 1-D array; ``None`` labels are refused (they would match each other)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per row), got shape {array.shape}")
    if array.dtype.kind == "O":
        missing = [i for i, value in enumerate(array.tolist()) if value is None]
        if missing:
            raise ValueError(f"{name}[{missing[0]}] is None ({len(missing)} missing labels in all)")
    return array


def as_label_matrix(name: str, values: Any, n_rows: int) -> np.ndarray:
    """Retrieved labels as a ``(n_rows, m)`` array, best neighbour first in each row."""
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[0] != n_rows:
        raise ValueError(f"{name} must have shape ({n_rows}, m) (one ranked row per query), got {array.shape}")
    return array


def check_comparable(left_name: str, left: np.ndarray, right_name: str, right: np.ndarray) -> None:
    """Refuse to compare string labels with numeric ones (numpy would quietly say "never equal")."""
    kinds = {left.dtype.kind, right.dtype.kind}
    if "O" in kinds:
        return
    if kinds & _STRING_KINDS and kinds & _NUMBER_KINDS:
        raise ValueError(
            f"{left_name} ({left.dtype}) and {right_name} ({right.dtype}) cannot be compared: "
            "use the same kind of label (all strings or all numbers) on both sides"
        )


def relevance(query_name: str, query_labels: Any, retrieved_name: str, retrieved_labels: Any, k: Any) -> np.ndarray:
    """Boolean ``(q, min(k, m))`` matrix: does the i-th neighbour share the query's label?

    Raises:
        ValueError: On bad shapes, incomparable label kinds, a bad ``k``, or no retrieved columns.
    """
    k = check_k("k", k)
    query = as_label_vector(query_name, query_labels)
    if query.shape[0] == 0:
        raise ValueError(f"{query_name} is empty: there are no queries to score")
    retrieved = as_label_matrix(retrieved_name, retrieved_labels, query.shape[0])
    if retrieved.shape[1] == 0:
        raise ValueError(f"{retrieved_name} has no columns: no neighbour was retrieved for any query")
    check_comparable(query_name, query, retrieved_name, retrieved)
    top = retrieved[:, :k]
    return np.asarray(top == query[:, None], dtype=bool)
