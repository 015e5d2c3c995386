"""Class-balanced batches: every batch holds ``m`` distinct images of each of ``batch_size / m`` classes.

Metric-learning losses learn from the positive and negative pairs inside a batch; drawing images
uniformly would leave rare classes without positives, so the batch is built per class instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from clothsim.errors import DataError, UsageError


class MPerClassBatches:
    """An iterable of index batches, ``m`` per class, re-drawn (seeded) on every pass.

    Args:
        labels: One label per row.
        m: Rows of each class in a batch (>= 2, so that every class has a positive pair).
        batch_size: Rows per batch, a multiple of ``m``.
        seed: Base seed; pass ``epoch`` to :meth:`batches` for a new draw per epoch.

    Raises:
        UsageError: bad ``m`` / ``batch_size``.
        DataError: fewer than two classes with two or more rows.
    """

    def __init__(self, labels: Sequence, m: int = 4, batch_size: int = 64, seed: int = 0) -> None:
        if m < 2:
            raise UsageError(f"m (images per class in a batch) must be at least 2, got {m}")
        if batch_size < 2 * m or batch_size % m:
            raise UsageError(f"batch_size must be a multiple of m={m} and at least {2 * m}, got {batch_size}")
        labels = np.asarray(labels)
        self.by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
        self.by_class = {c: rows for c, rows in self.by_class.items() if rows.size >= 2}
        if len(self.by_class) < 2:
            raise DataError("training needs at least two categories with two or more images each; got "
                            f"{len(self.by_class)}")
        self.m = m
        self.classes_per_batch = min(batch_size // m, len(self.by_class))
        self.batch_size = self.classes_per_batch * m
        self.n_rows = int(labels.size)
        self.seed = seed

    def __len__(self) -> int:
        """Batches per pass: about one pass over the rows."""
        return max(1, self.n_rows // self.batch_size)

    def batches(self, epoch: int = 0) -> Iterator[np.ndarray]:
        """The batches of one pass (epoch), each an array of row indices."""
        rng = np.random.default_rng([self.seed, epoch])
        classes = np.array(list(self.by_class), dtype=object)
        for _ in range(len(self)):
            chosen = rng.choice(len(classes), size=self.classes_per_batch, replace=False)
            parts = []
            for c in classes[chosen]:
                rows = self.by_class[c]
                parts.append(rng.choice(rows, size=self.m, replace=rows.size < self.m))
            yield np.concatenate(parts)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.batches(0)
