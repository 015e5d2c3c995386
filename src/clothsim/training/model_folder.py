"""What every trained model folder shares: a checkpoint beside a ``config.json``, read and checked alike,
and the network exported to ``model.onnx`` (named in ``config.json``) so the model searches without torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from clothsim.errors import DataError

CONFIG = "config.json"
#: The exported network in a model folder, run by ONNX Runtime (see ``clothsim.encoders.families``).
MODEL_FILE = "model.onnx"


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


def save_model_file(folder: str | Path, model_name: str) -> None:
    """Export the model folder's encoder (``model_name``, e.g. ``tuned:<folder>``) to ``model.onnx`` in the
    folder and record its spec in ``config.json``, both atomically; then ``model_name`` searches on ONNX
    Runtime alone. An encoder that cannot be exported keeps a folder that needs torch (logged)."""
    import logging
    import shutil

    from clothsim.encoders.factory import build_network
    from clothsim.encoders.families import SPEC_KEY
    from clothsim.fileio import atomic_path, write_json
    from clothsim.runtimes import NotRunnableError
    from clothsim.runtimes.onnx_export import export_spec

    folder = Path(folder)
    try:
        spec = export_spec(build_network(model_name))
    except NotRunnableError as exc:
        logging.getLogger(__name__).warning("%s: no ONNX model file saved (%s); searching with it needs torch",
                                            folder, exc)
        return
    with atomic_path(folder / MODEL_FILE) as tmp:
        shutil.copyfile(spec.model_path(), tmp)  # type: ignore[arg-type]
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    config[SPEC_KEY] = spec.with_model(MODEL_FILE, spec.model_sha256).to_dict()  # type: ignore[arg-type]
    write_json(folder / CONFIG, config)
