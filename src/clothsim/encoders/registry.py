"""Encoder registry: plug-ins from the ``clothsim.encoders`` and ``clothsim.encoder_families`` groups.

Plain names (``vgg16``) map to one :class:`EncoderPlugin` each. Family names carry a spec after a colon
(``ensemble:vgg16+resnet50``, ``siamese:model/``) and map to one :class:`EncoderFamilyPlugin` per
prefix. clothsim's own encoders are declared in its ``pyproject.toml`` like any third party's; nothing
here imports them (or torch) until an encoder is asked for. Building one is the factory's job
(:mod:`clothsim.encoders.factory`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

from clothsim.defaults import DEFAULT_ENCODER
from clothsim.plugins import ENCODER_FAMILIES, ENCODERS, PluginRegistry

if TYPE_CHECKING:
    from clothsim.encoders.base import Encoder
    from clothsim.encoders.spec import EncoderSpec

__all__ = [
    "DEFAULT_ENCODER",
    "EncoderFamilyPlugin",
    "EncoderInfo",
    "EncoderPlugin",
    "ReadyModelFamily",
    "ReadyModelPlugin",
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
        """Build the encoder's network with official (``None``), ``"random"`` or local-file weights (in
        torch, for the built-ins: the ``torch`` extra)."""
        ...


@runtime_checkable
class EncoderFamilyPlugin(Protocol):
    """Encoders named ``prefix:spec`` (the spec is a folder, a parts list, ...)."""

    description: str

    def create(self, spec: str, weights: str | Path | None, device: str) -> "Encoder":
        """Build the network of the encoder that ``spec`` describes."""
        ...


@runtime_checkable
class ReadyModelPlugin(Protocol):
    """An optional extra of an :class:`EncoderPlugin`: the spec of a model file that is ready to run
    (shipped with the plug-in), so ONNX Runtime runs it without building the network or importing torch.
    """

    def ready_spec(self, weights: str | Path | None) -> "EncoderSpec | None":
        """The spec with its model file for these weights, or ``None`` when the network must be built."""
        ...


@runtime_checkable
class ReadyModelFamily(Protocol):
    """An optional extra of an :class:`EncoderFamilyPlugin`, as :class:`ReadyModelPlugin` (e.g. a model
    folder that training saved with its ONNX file)."""

    def ready_spec(self, spec: str, weights: str | Path | None) -> "EncoderSpec | None":
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


def __getattr__(name: str):
    # create_encoder lives with the one factory (clothsim.encoders.factory); kept reachable from here.
    if name == "create_encoder":
        from clothsim.encoders.factory import create_encoder

        return create_encoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
