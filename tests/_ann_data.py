"""Seeded clustered vectors in a feature store, for the index-backend tests (not uniform noise: on noise,
approximate search is meaningless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clothsim.data.records import CatalogRecord
from clothsim.features.store import FeatureStore

CATEGORIES = ("coat", "dress", "hat", "shirt", "shoe", "skirt")


def clustered(n: int, dim: int, n_clusters: int, seed: int, rank: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, cluster)``: unit vectors around ``n_clusters`` centres, each cluster spread along a
    few directions of its own plus a little isotropic noise (a low intrinsic dimension, like features)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.normal(size=(n_clusters, rank, dim)) / np.sqrt(dim)
    cluster = rng.integers(n_clusters, size=n)
    spread = np.einsum("nr,nrd->nd", rng.normal(size=(n, rank)), bases[cluster])
    x = centres[cluster] + 0.6 * spread + rng.normal(size=(n, dim)) * (0.05 / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), cluster


def make_store(root: Path, n: int = 2000, dim: int = 32, seed: int = 0, n_clusters: int = 40,
               segments: int = 3, dtype: str = "float32", categories=CATEGORIES) -> FeatureStore:
    """A store of ``n`` clustered vectors in ``segments`` segments; category by cluster, split by row."""
    x, cluster = clustered(n, dim, n_clusters, seed)
    store = FeatureStore.create(root, {"encoder": "ann-test", "weights": "none", "dim": dim, "preprocessing": None},
                                dtype=dtype)
    bounds = np.linspace(0, n, segments + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        store.append(x[lo:hi], [CatalogRecord(f"img/{i}.jpg", categories[int(cluster[i]) % len(categories)],
                                              split="train" if i % 5 else "test") for i in range(lo, hi)])
    return store


def queries(n: int, dim: int, seed: int = 0, n_clusters: int = 40) -> np.ndarray:
    """Fresh points from the same clusters as :func:`make_store` with the same seed."""
    x, _ = clustered(n + 50_000, dim, n_clusters, seed)  # same centres and bases, points beyond the store's
    return x[-n:]


def exact_ids(store: FeatureStore, q: np.ndarray, k: int, category=None, exclude=None) -> list[list[int]]:
    """The exact top-k ids, by brute force over every live vector (the reference)."""
    vectors, items = store.load_vectors()
    ids = np.array([it.id for it in items])
    cats = np.array([it.record.category for it in items])
    out = []
    for i, row in enumerate(q):
        scores = vectors @ row
        keep = np.ones(len(ids), dtype=bool)
        if category is not None:
            keep &= np.isin(cats, [category] if isinstance(category, str) else list(category))
        if exclude is not None:
            keep &= ids != exclude[i]
        order = np.lexsort((ids[keep], -scores[keep]))[:k]
        out.append(ids[keep][order].tolist())
    return out


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / max(len(t), 1) for f, t in zip(found, truth)]))


def ids_of(hits) -> list[list[int]]:
    """The ids of a backend's search hits, row by row."""
    return [[h.id for h in row] for row in hits]
