"""How an encoder was built, as plain data, so another process (a Ray actor) can build the same one."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clothsim.encoders.base import Encoder


@dataclass(frozen=True)
class EncoderSpec:
    """The arguments that rebuild an encoder.

    Attributes:
        name: Registry name (families carry their absolute folder, e.g. ``tuned:/models/a``).
        weights: Absolute weights path, ``"random"``, a family's weights string, or ``None`` (official).
        device: Torch device.
        runtime: The runtime that ran it (``torch``, ``onnx``, ...).
        threads: Compute threads asked for, if any.
        int8_model: For an int8 encoder, its quantized ONNX file; ``quantized_sha256`` its hash.
    """

    name: str
    weights: str | None = None
    device: str = "cpu"
    runtime: str = "torch"
    threads: int | None = None
    int8_model: str | None = None
    quantized_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderSpec":
        return cls(**data)

    def with_int8(self, model: str | Path, sha256: str) -> "EncoderSpec":
        return replace(self, int8_model=str(model), quantized_sha256=sha256, runtime="onnx")

    def build(self, int8_model: str | Path | None = None) -> "Encoder":
        """Build the encoder (``int8_model`` overrides where the quantized file is, e.g. a local copy)."""
        from clothsim.encoders.registry import create_encoder

        if self.int8_model is None:
            return create_encoder(self.name, weights=self.weights, device=self.device, runtime=self.runtime,
                                  threads=self.threads)
        from clothsim.runtimes.int8 import load_int8_encoder

        base = create_encoder(self.name, weights=self.weights, device=self.device, runtime="torch")
        encoder = load_int8_encoder(base, int8_model or self.int8_model, self.quantized_sha256, threads=self.threads)
        encoder.runtime = "onnx"
        return encoder


def spec_of(encoder: "Encoder") -> EncoderSpec:
    """The spec ``create_encoder`` recorded on ``encoder``.

    Raises:
        UsageError: the encoder was built by hand, not by ``create_encoder`` (no spec to rebuild it from).
    """
    from clothsim.errors import UsageError

    spec = getattr(encoder, "build_spec", None)
    if spec is None:
        raise UsageError(f"encoder {encoder.name!r} was not built by create_encoder, so another process cannot "
                         "rebuild it; pass its registry name instead")
    return spec
