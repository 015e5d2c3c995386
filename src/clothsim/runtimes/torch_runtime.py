"""The ``torch`` runtime: the network an encoder's plug-in builds, run as it is: eager PyTorch for the
built-ins (the ``torch`` extra), on any torch device (CPU or CUDA)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clothsim.optional import is_installed
from clothsim.runtimes import NotRunnableError

if TYPE_CHECKING:
    from clothsim.encoders.base import Encoder
    from clothsim.encoders.spec import EncoderSpec


class TorchRuntime:
    """Runs the encoder's own torch modules as they are, on the device it was built for."""

    description = "the network as its plug-in builds it: eager PyTorch on --device (cpu, cuda, ...) for the built-ins"
    priority = 0
    executes = "network"

    def unavailable_reason(self) -> str | None:
        # Always offered: a plug-in whose network needs torch says so (with the pip line) when it builds.
        return None

    def load(self, spec: "EncoderSpec", *, threads: int | None = None, device: str = "cpu",
             network: "Encoder | None" = None, network_factory: object = None) -> "Encoder":
        if spec.precision != "fp32":
            raise NotRunnableError(f"{spec.name} is a {spec.precision} model file, which runs on the onnx runtime")
        if network is None:
            raise NotRunnableError(f"the torch runtime needs the network of {spec.name}, built by its plug-in")
        if threads and is_installed("torch"):
            import torch

            torch.set_num_threads(threads)  # torch only has a process-wide setting
        return network
