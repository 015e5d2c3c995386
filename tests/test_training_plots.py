"""Convergence plots are written as PNG files, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from clothsim.training.plots import save_training_curves

HISTORY = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_accuracy": 0.5 + e / 20,
            "val_accuracy": 0.45 + e / 20} for e in range(1, 6)]


def test_writes_two_pngs(tmp_path: Path) -> None:
    loss, acc = save_training_curves(HISTORY, tmp_path / "a" / "loss.png", tmp_path / "acc.png", best_epoch=4)
    for path in (loss, acc):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_bad_history(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        save_training_curves([], tmp_path / "l.png", tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"history\[0\] lacks \['val_accuracy'\]"):
        save_training_curves([{k: v for k, v in HISTORY[0].items() if k != "val_accuracy"}],
                             tmp_path / "l.png", tmp_path / "a.png")
