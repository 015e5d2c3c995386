"""Convergence plots of a Siamese training run: loss and pair accuracy, train against validation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clothsim.fileio import atomic_path


def _plot(history: Sequence[dict[str, float]], key: str, ylabel: str, title: str, path: Path,
          best_epoch: int | None) -> None:
    # A bare Figure renders to files without pyplot or a backend switch (no global state).
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.add_subplot()
    ax.plot(epochs, [row[f"train_{key}"] for row in history], label="train", color="tab:blue")
    ax.plot(epochs, [row[f"val_{key}"] for row in history], label="validation", color="tab:orange")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def save_training_curves(
    history: Sequence[dict[str, float]],
    loss_path: str | Path,
    accuracy_path: str | Path,
    best_epoch: int | None = None,
) -> tuple[Path, Path]:
    """Write the loss and the accuracy curves as PNG files (atomically); returns their paths.

    Args:
        history: Rows with ``epoch``, ``train_loss``, ``val_loss``, ``train_accuracy``, ``val_accuracy``.
        loss_path: PNG for the contrastive loss.
        accuracy_path: PNG for the pair accuracy.
        best_epoch: Marked with a dashed line when given.

    Raises:
        ValueError: ``history`` is empty or a row lacks a field.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    needed = ("epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy")
    for i, row in enumerate(history):
        missing = [k for k in needed if k not in row]
        if missing:
            raise ValueError(f"history[{i}] lacks {missing}")
    loss_path, accuracy_path = Path(loss_path), Path(accuracy_path)
    _plot(history, "loss", "contrastive loss", "Siamese network: loss", loss_path, best_epoch)
    _plot(history, "accuracy", "pair accuracy (distance < threshold)", "Siamese network: pair accuracy",
          accuracy_path, best_epoch)
    return loss_path, accuracy_path
