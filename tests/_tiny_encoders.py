"""Registered weight-free encoders for ensemble and evaluation tests (importing registers them once)."""

from __future__ import annotations

import numpy as np
import torch

from clothsim.encoders.base import Encoder, Preprocessing, l2_normalize
from clothsim.encoders.registry import encoder_registry, register_encoder
from clothsim.errors import WeightsUnavailableError


class ThumbnailEncoder(Encoder):
    """An ``side x side`` thumbnail, flattened: deterministic, fast, and different per ``side``."""

    weights_id = "none"

    def __init__(self, name: str, side: int, mean: float) -> None:
        self.name = name
        self.dim = 3 * side * side
        self.preprocessing = Preprocessing(input_size=side, resize_size=side, mean=(mean,) * 3, std=(0.25,) * 3)

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        return l2_normalize(np.asarray(batch, dtype=np.float32).reshape(len(batch), -1))


UNAVAILABLE_MESSAGE = "test weights are not here: put them at /nowhere/weights.pth"


def _register() -> None:
    if "test-thumb8" in encoder_registry:
        return

    @register_encoder("test-thumb8", dim=192, input_size=8, description="test: 8x8 thumbnail")
    def _thumb8(weights, device):
        return ThumbnailEncoder("test-thumb8", 8, 0.5)

    @register_encoder("test-thumb4", dim=48, input_size=4, description="test: 4x4 thumbnail")
    def _thumb4(weights, device):
        return ThumbnailEncoder("test-thumb4", 4, 0.4)

    @register_encoder("test-unavailable", dim=8, input_size=8, description="test: weights never available")
    def _unavailable(weights, device):
        raise WeightsUnavailableError(UNAVAILABLE_MESSAGE)


_register()
