"""A tuned model folder as an encoder: ``create_encoder("tuned:model/")``, and saving/loading that folder.

A model folder holds::

    tuned.pt        the tuned network's state dict (the layers above the cut, pooling, head; one set per
                    member where several networks were trained, ``--members``)
    config.json     network shape, backbone (name, weights, fingerprint), training config, categories,
                    best epoch, the checkpoint's SHA-256
    history.json    per-epoch train loss, validation loss and validation P@k
    report.json, report.md   test split: pretrained default against tuned, overall and per category
    curves.png      loss and validation P@k per epoch

The layers below the cut are not stored: they are the backbone's pretrained layers, rebuilt from the
same weights (checked against the fingerprint recorded at training time). The encoder's fingerprint
carries the checkpoint's SHA-256, so an index built by another (or a retrained) model is stale.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clothsim.encoders.base import Encoder, l2_normalize
from clothsim.errors import DataError, UsageError
from clothsim.fileio import atomic_path, file_sha256, write_json
from clothsim.training.model_folder import CONFIG, read_model_folder
from clothsim.training.tuned_model import (
    FullGraph,
    NetworkConfig,
    TunedMembers,
    TunedNetwork,
    backbone_layers,
    check_cut,
)

logger = logging.getLogger(__name__)

CHECKPOINT = "tuned.pt"
HISTORY = "history.json"
FORMAT = 1


class TunedEncoder(Encoder):
    """Images -> frozen pretrained lower layers -> tuned upper layers, pooling, head -> unit vectors.

    Args:
        name: Registry name (``tuned:<absolute model folder>``).
        backbone: The pretrained encoder the model was cut from (gives preprocessing and weights id).
        lower: The frozen layers below the cut.
        network: The tuned network (or several, :class:`TunedMembers`).
        meta: The model folder's ``config.json`` (with the checkpoint hash).
        device: Torch device.
    """

    def __init__(self, name: str, backbone: Encoder, lower: nn.Module, network: TunedNetwork | TunedMembers,
                 meta: dict[str, Any], device: str | torch.device = "cpu") -> None:
        self.name = name
        self.device = torch.device(device)
        self.graph = FullGraph(lower, network).to(self.device).eval().requires_grad_(False)
        self.meta = meta
        self.dim = int(network.config.embedding_dim)
        self.preprocessing = backbone.preprocessing
        self.backbone_name = backbone.name
        self.weights_id = f"{backbone.weights_id}+tuned-sha256:{meta['checkpoint_sha256'][:16]}"

    def embed(self, batch: Any) -> np.ndarray:
        """``(N, dim)`` float32 unit rows for a batch of ``transform`` outputs."""
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"{self.name}: batch must be a (N, 3, H, W) tensor, got "
                             f"{getattr(batch, 'shape', type(batch).__name__)}")
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            out = self.graph(batch.to(self.device, torch.float32))
        return l2_normalize(out.float().cpu().numpy())

    def export_module(self) -> nn.Module:
        """The whole graph (lower, upper, pooling, head, flip average) for the ONNX runtime."""
        return self.graph

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp["backbone"] = self.backbone_name
        fp["checkpoint_sha256"] = self.meta["checkpoint_sha256"]
        return fp


def save_tuned(out_dir: str | Path, network: TunedNetwork | TunedMembers, meta: dict[str, Any],
               history: list[dict[str, Any]] | None = None) -> Path:
    """Write the checkpoint, the history, then ``config.json`` (last: it marks the folder complete).

    Returns:
        The checkpoint path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CHECKPOINT
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    shape = _network_record(network)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **shape, "state_dict": state}, tmp)
    if history is not None:
        write_json(out / HISTORY, history)
    write_json(out / CONFIG, {**meta, "format": FORMAT, **shape, "checkpoint_sha256": file_sha256(path)})
    return path


def _network_record(network: TunedNetwork | TunedMembers) -> dict[str, Any]:
    """``network`` (one member's shape) and ``members`` (how many; absent for a single network)."""
    if isinstance(network, TunedMembers):
        return {"network": network.member_config.to_dict(), "members": len(network.members)}
    return {"network": network.config.to_dict()}


def load_tuned_encoder(model_dir: str | Path, weights: str | Path | None = None,
                       device: str = "cpu") -> TunedEncoder:
    """The encoder of a model folder written by ``clothsim train`` (eager torch; ``create_encoder``
    hands it to a runtime).

    Args:
        model_dir: The model folder.
        weights: The backbone's weights file, if not the one recorded at training time.
        device: Torch device.

    Raises:
        FileNotFoundError: no model folder at ``model_dir``.
        DataError: the checkpoint is of another format or does not fit its config.
        UsageError: the backbone weights are not those the model was trained on.
    """
    from clothsim.encoders.factory import build_network

    folder = Path(model_dir).expanduser().resolve()
    path, meta, saved = read_model_folder(folder, CHECKPOINT, "tuned", FORMAT, "clothsim train")
    config_path = folder / CONFIG
    config = NetworkConfig(**saved["network"])
    base_weights = weights if weights is not None else meta.get("backbone_weights")
    backbone = build_network(config.backbone, weights=base_weights, device="cpu")
    trained_on = meta.get("backbone_fingerprint", {}).get("weights")
    if trained_on is not None and trained_on != backbone.weights_id:
        raise UsageError(f"{config_path}: the model was trained on {config.backbone} weights {trained_on}, "
                         f"but the weights given are {backbone.weights_id}; pass --weights with the original file")
    layers, channels = backbone_layers(backbone)
    check_cut(len(layers), config.cut, config.train_layers)
    members = int(saved.get("members", 1))
    network: TunedNetwork | TunedMembers = (
        TunedNetwork(layers[config.cut:], channels, config) if members == 1 else
        TunedMembers([TunedNetwork(copy.deepcopy(layers[config.cut:]), channels, config) for _ in range(members)]))
    try:
        network.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        raise DataError(f"{path}: weights do not fit the saved network shape: {exc}") from exc
    meta["checkpoint_sha256"] = file_sha256(path)  # the file as it is now, whatever config.json says
    return TunedEncoder(f"tuned:{folder}", backbone, nn.Sequential(*layers[:config.cut]), network, meta, device)

