"""Eager PyTorch: the runtime every encoder is written for, on any torch device (CPU or CUDA)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clothsim.encoders.base import Encoder


class TorchRuntime:
    """Runs the encoder's own torch modules as they are, on the device it was built for."""

    description = "eager PyTorch on the encoder's --device (cpu, cuda, ...)"
    priority = 0

    def unavailable_reason(self) -> str | None:
        return None  # torch is a core dependency

    def prepare(self, encoder: "Encoder", threads: int | None = None) -> "Encoder":
        if threads:
            import torch

            torch.set_num_threads(threads)  # torch only has a process-wide setting
        return encoder
