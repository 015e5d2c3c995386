"""The comparison report's charts, drawn on bare matplotlib Figures (no pyplot state, no window)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from clothsim.fileio import atomic_path

logger = logging.getLogger(__name__)


def save_figure(fig: Figure, out_path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically; returns the path."""
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    return out_path


def plot_precision_bars(
    labels: Sequence[str], precision: Sequence[dict[int, float]], out_path: str | Path, chance: float | None = None
) -> Path:
    """Grouped bars: one group per cut-off k, one bar per encoder, value printed on each bar."""
    ks = sorted(precision[0]) if precision else []
    fig = Figure(figsize=(max(6.0, 1.6 + 1.1 * len(ks) * max(1, len(labels)) * 0.6), 4.2), dpi=100,
                 layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(labels))
    for i, (label, values) in enumerate(zip(labels, precision)):
        xs = np.arange(len(ks)) + (i - (len(labels) - 1) / 2) * width
        bars = ax.bar(xs, [values[k] for k in ks], width=width * 0.95, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3f})")
    ax.set_xticks(np.arange(len(ks)), [f"P@{k}" for k in ks])
    ax.set_ylim(0, 1.22)  # head room for the legend above the bars
    ax.set_ylabel("precision (same category)")
    ax.set_title("Precision@k per encoder")
    ax.legend(fontsize=8, loc="upper center", ncols=min(3, len(labels) + 1), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return save_figure(fig, out_path)


def plot_category_heatmap(
    labels: Sequence[str], categories: Sequence[str], values: np.ndarray, out_path: str | Path, k: int = 5
) -> Path:
    """Encoders x categories heatmap of per-category precision@k, each cell annotated."""
    values = np.asarray(values, dtype=np.float64)
    fig = Figure(figsize=(max(6.0, 1.8 + 0.75 * len(categories)), 1.4 + 0.5 * len(labels)), dpi=100,
                 layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(categories)), categories, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(f"Per-category precision@{k}")
    fig.colorbar(image, ax=ax, fraction=0.03)
    return save_figure(fig, out_path)


def embedding_map(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE coordinates of ``vectors`` (PCA to 50 dimensions first when larger), seeded."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    vectors = np.asarray(vectors, dtype=np.float32)
    n = vectors.shape[0]
    if n < 5:
        raise ValueError(f"a t-SNE map needs at least 5 points, got {n}")
    if vectors.shape[1] > 50 and n > 50:
        vectors = PCA(n_components=50, random_state=seed).fit_transform(vectors)
    perplexity = float(min(30.0, (n - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine")
    # One thread: the same map whatever the core count, and no spinning OpenMP threads on a busy CPU
    # (several times slower than one thread for the small maps of a report).
    with threadpool_limits(limits=1):
        return tsne.fit_transform(vectors)


def plot_embedding_maps(maps: Sequence[tuple[str, np.ndarray, Sequence[Any]]], out_path: str | Path) -> Path:
    """One scatter panel per encoder: 2-D points coloured by category, with one shared legend."""
    categories = sorted({str(c) for _, _, cats in maps for c in cats})
    cmap = _category_colours(len(categories))
    n = len(maps)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(4.6 * cols + 1.8, 4.4 * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (label, xy, cats) in zip(axes.flat, maps):
        cats = np.asarray([str(c) for c in cats])
        for i, category in enumerate(categories):
            mask = cats == category
            ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=cmap[i], label=category, alpha=0.8, linewidths=0)
        ax.set_title(f"{label} ({len(cats)} points)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right center", fontsize=8, markerscale=2.5, title="category")
    fig.suptitle("t-SNE map of the embeddings, coloured by category")
    return save_figure(fig, out_path)


def plot_confusion(matrix: np.ndarray, categories: Sequence[str], title: str, out_path: str | Path) -> Path:
    """Top-1 confusion matrix as row-normalised colours with raw counts written in the cells."""
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=np.float64), where=totals > 0)
    side = max(4.5, 1.8 + 0.48 * len(categories))
    fig = Figure(figsize=(side + 0.8, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    for (r, c), count in np.ndenumerate(matrix):
        if count:
            ax.text(c, r, str(count), ha="center", va="center", fontsize=7,
                    color="white" if share[r, c] > 0.55 else "black")
    ax.set_xticks(range(len(categories)), categories, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(categories)), categories, fontsize=8)
    ax.set_xlabel("category of the nearest neighbour")
    ax.set_ylabel("query category")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of the row")
    return save_figure(fig, out_path)


def _category_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    name = "tab10" if n <= 10 else "tab20"
    cmap = colormaps[name]
    return [cmap(i % cmap.N) for i in range(n)]
