"""Saving and loading a trained Siamese model folder (every file written atomically).

A model folder holds::

    siamese.pt        torch state dict of the network + its branch shape (the checkpoint)
    config.json       training config, base encoder (name, weights file, fingerprint), threshold,
                      categories, best epoch, the checkpoint's SHA-256
    history.json      per-epoch losses and accuracies
    loss.png, accuracy.png   convergence plots
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clothsim.fileio import atomic_path, file_sha256, write_json
from clothsim.training.model_folder import CONFIG, read_model_folder
from clothsim.training.model import BranchConfig, SiameseNetwork
from clothsim.errors import DataError

CHECKPOINT = "siamese.pt"
HISTORY = "history.json"
FORMAT = 1


def save_model(out_dir: str | Path, model: SiameseNetwork, meta: dict[str, Any],
               history: list[dict[str, float]] | None = None) -> Path:
    """Write the checkpoint, then ``config.json`` (with the checkpoint's hash) and the history.

    Returns:
        The checkpoint path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CHECKPOINT
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "branch": model.config.to_dict(), "state_dict": state}, tmp)
    if history is not None:
        write_json(out / HISTORY, history)
    write_json(out / CONFIG, {**meta, "format": FORMAT, "branch": model.config.to_dict(),
                              "checkpoint_sha256": file_sha256(path)})
    return path


def load_model(model_dir: str | Path) -> tuple[SiameseNetwork, dict[str, Any]]:
    """Load a model folder written by :func:`save_model`: the network (eval mode) and its config.

    Raises:
        FileNotFoundError: the folder lacks ``siamese.pt`` or ``config.json``.
        ValueError: the files are of another format or do not fit together.
    """
    path, meta, saved = read_model_folder(model_dir, CHECKPOINT, "Siamese", FORMAT, "clothsim train-siamese")
    model = SiameseNetwork(BranchConfig(**saved["branch"]))
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        raise DataError(f"{path}: weights do not fit the saved branch shape: {exc}") from exc
    meta["checkpoint_sha256"] = file_sha256(path)  # the file as it is now, whatever config.json says
    return model.eval(), meta
