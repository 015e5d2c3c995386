"""Encoder registry: plug-ins from the ``clothsim.encoders`` and ``clothsim.encoder_families`` groups.

Plain names (``vgg16``) map to one :class:`EncoderPlugin` each. Family names carry a spec after a colon
(``ensemble:vgg16+resnet50``, ``siamese:model/``) and map to one :class:`EncoderFamilyPlugin` per
prefix. clothsim's own encoders are declared in its ``pyproject.toml`` like any third party's; nothing
here imports them (or torch) until an encoder is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

from clothsim.defaults import DEFAULT_ENCODER, DEFAULT_RUNTIME
from clothsim.errors import UnknownEncoderError, UsageError
from clothsim.plugins import ENCODER_FAMILIES, ENCODERS, PluginRegistry

if TYPE_CHECKING:
    from clothsim.encoders.base import Encoder
    from clothsim.encoders.spec import EncoderSpec

__all__ = [
    "DEFAULT_ENCODER",
    "EncoderFamilyPlugin",
    "EncoderInfo",
    "EncoderPlugin",
    "create_encoder",
    "encoder_registry",
    "family_registry",
    "list_encoders",
    "register_encoder",
    "register_encoder_family",
]


@runtime_checkable
class EncoderPlugin(Protocol):
    """An encoder that ``create_encoder(name)`` can build.

    Attributes:
        dim: Size of the vectors it produces.
        input_size: Side of the square network input.
        description: One line for ``clothsim encoders``.
    """

    dim: int
    input_size: int
    description: str

    def create(self, weights: str | Path | None, device: str) -> "Encoder":
        """Build the encoder with official (``None``), ``"random"`` or local-file weights."""
        ...


@runtime_checkable
class EncoderFamilyPlugin(Protocol):
    """Encoders named ``prefix:spec`` (the spec is a folder, a parts list, ...)."""

    description: str

    def create(self, spec: str, weights: str | Path | None, device: str) -> "Encoder":
        """Build the encoder that ``spec`` describes."""
        ...


encoder_registry: PluginRegistry[EncoderPlugin] = PluginRegistry(ENCODERS, EncoderPlugin, "encoder")
family_registry: PluginRegistry[EncoderFamilyPlugin] = PluginRegistry(
    ENCODER_FAMILIES, EncoderFamilyPlugin, "encoder family")


@dataclass(frozen=True)
class EncoderInfo:
    """What ``clothsim encoders`` lists."""

    name: str
    dim: int | None
    input_size: int | None
    description: str
    family: bool = False


@dataclass(frozen=True)
class _FunctionEncoder:
    """Adapts a ``factory(weights, device)`` function registered with :func:`register_encoder`."""

    dim: int
    input_size: int
    description: str
    factory: Callable[[str | Path | None, str], "Encoder"]

    def create(self, weights: str | Path | None, device: str) -> "Encoder":
        return self.factory(weights, device)


@dataclass(frozen=True)
class _FunctionFamily:
    description: str
    factory: Callable[[str, str | Path | None, str], "Encoder"]

    def create(self, spec: str, weights: str | Path | None, device: str) -> "Encoder":
        return self.factory(spec, weights, device)


def register_encoder(name: str, *, dim: int, input_size: int, description: str) -> Callable:
    """Decorator registering ``factory(weights, device) -> Encoder`` under ``name`` from code.

    Packages should declare an entry point in ``clothsim.encoders`` instead, so that nothing needs to
    import them first; this is for notebooks and tests.
    """

    def decorate(factory: Callable) -> Callable:
        encoder_registry.register(name, _FunctionEncoder(dim, input_size, description, factory))
        return factory

    return decorate


def register_encoder_family(prefix: str, *, description: str) -> Callable:
    """Decorator registering ``factory(spec, weights, device) -> Encoder`` for names ``prefix:spec``."""

    def decorate(factory: Callable) -> Callable:
        family_registry.register(prefix, _FunctionFamily(description, factory))
        return factory

    return decorate


def list_encoders() -> list[EncoderInfo]:
    """Every working encoder and encoder family, plain names first."""
    plain = [EncoderInfo(name, int(p.dim), int(p.input_size), p.description) for name, p in encoder_registry.items()]
    families = [EncoderInfo(f"{prefix}:<spec>", None, None, p.description, family=True)
                for prefix, p in family_registry.items()]
    return plain + families


def create_encoder(
    name: str = DEFAULT_ENCODER,
    weights: str | Path | None = None,
    device: str = "cpu",
    runtime: str = DEFAULT_RUNTIME,
    threads: int | None = None,
) -> "Encoder":
    """Build a registered encoder and hand it to a runtime.

    Args:
        name: A name from :func:`list_encoders`, or ``family:spec``.
        weights: ``None`` for the official pretrained weights (downloaded and cached on first use where
            that needs a download), ``"random"`` for random initialisation, or a path to a local
            state-dict file.
        device: Torch device string; CPU by default.
        runtime: What runs the network: a name from ``clothsim.runtimes.list_runtimes()`` or
            ``"auto"`` (the fastest one that can run this encoder here: ONNX Runtime on a CPU, else
            torch). Every runtime gives the same vectors.
        threads: Compute threads of the runtime (default: every core this process may use).

    Raises:
        UnknownEncoderError: ``name`` is not registered; the message lists the known names.
        WeightsUnavailableError: no weights could be had; the message says what to download and where.
        UsageError: unknown or unavailable runtime.
    """
    from clothsim.runtimes import AUTO, resolve_runtime, run_with

    resolve_runtime(runtime)  # before building: a bad or missing runtime should fail at once
    if runtime == AUTO and str(device) != "cpu":
        runtime = "torch"  # the other runtimes here run on the CPU
    if name in encoder_registry:
        encoder = encoder_registry.get(name).create(weights, device)
    else:
        prefix, sep, spec = name.partition(":")
        if sep and prefix in family_registry:
            if not spec:
                raise UnknownEncoderError(f"encoder {name!r} needs a spec after '{prefix}:'")
            encoder = family_registry.get(prefix).create(spec, weights, device)
        else:
            broken = {**encoder_registry.broken(), **family_registry.broken()}
            if name in broken or prefix in broken:
                raise UsageError(f"encoder {name!r} is installed but failed to load: "
                                 f"{broken.get(name) or broken.get(prefix)}")
            known = encoder_registry.names() + [f"{p}:<spec>" for p in family_registry.names()]
            raise UnknownEncoderError(f"unknown encoder {name!r}; known encoders: {', '.join(known)}")
    prepared = run_with(encoder, runtime, threads)
    prepared.build_spec = _spec(name, encoder, weights, device, prepared.runtime, threads)
    return prepared


def _spec(asked: str, encoder: "Encoder", weights: str | Path | None, device: str, runtime: str,
          threads: int | None) -> "EncoderSpec":
    from clothsim.encoders.spec import EncoderSpec
    from clothsim.encoders.weights import weights_source

    if asked in encoder_registry:
        recorded = weights_source(weights)
    else:  # a family: its name holds its absolute folder; weights may be "part=PATH" pairs
        recorded = None if weights is None else str(weights)
    return EncoderSpec(encoder.name if ":" in asked else asked, recorded, str(device), runtime, threads)
