"""``timm:NAME``: any model of timm as an encoder, by its pooled features (the ``hub`` extra).

The network is timm's own, made with ``num_classes=0`` so its forward pass returns the pooled features
before the classifier (average-pooled maps for a CNN, the class token or the token average for a vision
transformer, as the model defines). Its preprocessing comes from the weights' pretrained config (input
size, interpolation, crop share and mode, mean and std), never from a guess.

Weights: ``None`` takes the model's pretrained weights from the hub (``timm/<name>`` /
``model.safetensors``, see :mod:`clothsim.encoders.hub_files`), a path takes a local checkpoint (a timm
state dict as ``.safetensors`` or a torch file), ``"random"`` a seeded random initialisation. A
checkpoint must fit the model exactly, the classifier aside.
"""

from __future__ import annotations

import difflib
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clothsim.encoders.base import Encoder, Preprocessing, l2_normalize
from clothsim.encoders.hub_files import hub_file
from clothsim.encoders.weights import RANDOM, build_seeded, file_digest
from clothsim.errors import DataError, UnknownEncoderError, UsageError
from clothsim.optional import require

logger = logging.getLogger(__name__)

PREFIX = "timm:"
#: The file a timm repository on the hub keeps its weights in.
HUB_WEIGHTS = "model.safetensors"
FIND_MODELS = ("list them with: python -c \"import timm; print(timm.list_models('*vit*', pretrained=True))\" "
               "(any pattern), or browse https://huggingface.co/timm")


def _timm():
    return require("timm", extra="hub", feature="timm: encoders")


def check_model_name(name: str) -> None:
    """Refuse a name timm does not know, with the closest known names and how to list them all.

    Raises:
        UnknownEncoderError: the message lists similar names and how to find valid ones.
    """
    timm = _timm()
    if timm.is_model(name):
        return
    arch = name.split(".")[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    similar = f"; similar names: {', '.join(close)}" if close else ""
    raise UnknownEncoderError(f"unknown timm model {name!r}{similar}; {FIND_MODELS}")


def timm_preprocessing(config: dict[str, Any], name: str) -> Preprocessing:
    """clothsim's :class:`Preprocessing` for timm's resolved data config of a model (its eval transform:
    resize to ``floor(size / crop_pct)``, centre crop to ``size``).

    Raises:
        UsageError: a setting clothsim cannot reproduce (a non-square input, another interpolation or
            crop mode); the message names it.
    """
    _, height, width = config["input_size"]
    if height != width:
        raise UsageError(f"timm:{name} takes {height}x{width} inputs; clothsim encoders take square inputs")
    interpolation = config.get("interpolation", "bilinear")
    if interpolation not in ("bilinear", "bicubic"):
        raise UsageError(f"timm:{name} uses {interpolation!r} interpolation; clothsim supports bilinear and bicubic")
    mode = config.get("crop_mode") or "center"
    if mode not in ("center", "squash"):
        raise UsageError(f"timm:{name} uses crop mode {mode!r}; clothsim supports 'center' and 'squash'")
    crop_pct = config.get("crop_pct") or 0.875  # timm's own default when a config has none
    return Preprocessing(input_size=int(height), resize_size=int(math.floor(height / crop_pct)),
                         mean=tuple(config["mean"]), std=tuple(config["std"]),  # type: ignore[arg-type]
                         interpolation=interpolation, resize_mode="squash" if mode == "squash" else "shortest")


def official_weights(name: str) -> Path:
    """The local copy of the pretrained weights of ``name`` (downloaded from the hub once).

    Raises:
        UsageError: timm has no pretrained weights for ``name``.
        WeightsUnavailableError: not here and not downloadable; says what to put where.
    """
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise UsageError(f"timm:{name} has no pretrained weights on the hub; pass --weights PATH (a checkpoint of "
                         f"{name}) or --weights random; {FIND_MODELS}")
    filename = getattr(cfg, "hf_hub_filename", None) or HUB_WEIGHTS
    hint = f"; or pass --weights PATH naming a local checkpoint of {name}, or --weights random"
    return hub_file(repo, filename, what=f"timm:{name} weights", hint=hint)


def _load_checkpoint(model: nn.Module, path: Path, name: str) -> None:
    """Load a local checkpoint into ``model`` (built with ``num_classes=0``), strictly: every weight the
    encoder uses must be in the file, and the file may hold nothing else but the classifier."""
    from timm.models import load_state_dict

    if not path.is_file():
        from clothsim.errors import WeightsUnavailableError

        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        state = load_state_dict(str(path), use_ema=True, weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from exc
    expected = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {k: v for k, v in state.items()
             if k in expected or not any(k == c or k.startswith(c + ".") for c in classifier)}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise DataError(f"{path} is not a checkpoint of timm:{name}: {len(missing)} weights missing "
                        f"({', '.join(missing[:3])}), {len(unexpected)} unknown ({', '.join(unexpected[:3])})")
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in state.items()
             if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise DataError(f"{path}: shapes differ from timm:{name}'s (file != model): {'; '.join(wrong[:3])}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def build_timm_model(name: str, weights: str | Path | None) -> tuple[nn.Module, str, str]:
    """The timm model ``name`` without classifier, in eval mode, with its weights id and where they came
    from (see the module docstring for ``weights``)."""
    timm = _timm()
    check_model_name(name)

    def create() -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=0)

    if isinstance(weights, str) and weights == RANDOM:
        return build_seeded(create).eval(), RANDOM, RANDOM
    path = official_weights(name) if weights is None else Path(weights).expanduser()
    model = create()
    _load_checkpoint(model, path, name)
    return model.eval(), file_digest(path), str(path)


class TimmEncoder(Encoder):
    """A timm model's pooled features, L2-normalised.

    Args:
        name: The timm model name (with its pretrained tag, if one was given).
        model: The model, built with ``num_classes=0``.
        weights_id: The weights' file hash prefix, or ``"random"``.
        device: Torch device.
    """

    def __init__(self, name: str, model: nn.Module, weights_id: str, device: str | torch.device = "cpu") -> None:
        timm = _timm()
        self.name = f"{PREFIX}{name}"
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.weights_id = weights_id
        self.preprocessing = timm_preprocessing(timm.data.resolve_model_data_config(model), name)
        # One small forward pass says what the model gives: the pooled size, and whether its features
        # before pooling are a feature map (a CNN: GeM applies) or tokens (a transformer).
        size = self.preprocessing.input_size
        with torch.no_grad():
            probe = torch.zeros(1, 3, size, size, device=self.device)
            features = self.model.forward_features(probe)
            pooled = self.model.forward_head(features, pre_logits=True)
        self.dim = int(pooled.shape[-1])
        self.has_feature_map = features.ndim == 4 and features.shape[1] == self.dim

    def _batch(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"{self.name}: batch must have shape (N, 3, H, W), got "
                             f"{tuple(getattr(batch, 'shape', ())) or type(batch).__name__}")
        return batch.to(self.device, torch.float32)

    def embed(self, batch: Any) -> np.ndarray:
        """``(N, dim)`` unit rows: the model's pooled features."""
        batch = self._batch(batch)
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            pooled = self.model(batch)
        return l2_normalize(pooled.float().cpu().numpy())

    def export_module(self) -> nn.Module:
        """The model itself: images to pooled features."""
        return self.model

    @property
    def trunk(self) -> nn.Module:
        """The feature-map part (a CNN's), for GeM pooling; transformers have none."""
        if not self.has_feature_map:
            raise AttributeError(f"{self.name} gives tokens, not a feature map")
        return _ForwardFeatures(self.model)

    def feature_maps(self, batch: Any) -> torch.Tensor:
        """The un-pooled feature map ``(N, dim, h, w)`` of a CNN (see :attr:`trunk`)."""
        if not self.has_feature_map:
            raise AttributeError(f"{self.name} gives tokens, not a feature map")
        with torch.no_grad():
            return self.model.forward_features(self._batch(batch)).contiguous()


class _ForwardFeatures(nn.Module):
    """A timm model's ``forward_features`` as a module of its own (images to the last feature map)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def build_timm_encoder(name: str, weights: str | Path | None, device: str) -> TimmEncoder:
    """The ``timm:`` family's encoder for timm model ``name``."""
    model, weights_id, source = build_timm_model(name, weights)
    logger.debug("built timm:%s with weights %s from %s", name, weights_id, source)
    return TimmEncoder(name, model, weights_id, device)
