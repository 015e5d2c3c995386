"""What every trained model folder shares: a checkpoint beside a ``config.json``, read and checked alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from clothsim.errors import DataError

CONFIG = "config.json"


def read_model_folder(folder: str | Path, checkpoint: str, kind: str, fmt: int,
                      train_command: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The checkpoint's path, the folder's config and the loaded checkpoint (tensors on the CPU).

    Raises:
        FileNotFoundError: the checkpoint or ``config.json`` is missing (the message says how to make one).
        DataError: the checkpoint is not a clothsim ``kind`` checkpoint of format ``fmt``.
    """
    folder = Path(folder)
    path, config_path = folder / checkpoint, folder / CONFIG
    for needed in (path, config_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{folder} is not a {kind} model folder (no {needed.name}); "
                                    f"train one with `{train_command}`")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{config_path} is damaged ({exc}); train the model again") from None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != fmt:
        raise DataError(f"{path}: not a clothsim {kind} checkpoint of format {fmt}")
    return path, meta, saved
