"""Encoder registry: ``@register_encoder`` on a factory, ``create_encoder(name)`` to build one.

Plain names (``vgg16``) map to one factory each. Family names carry a spec after a colon
(``ensemble:vgg16+resnet50``, ``siamese:model/``) and map to one factory per prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from clothsim.encoders.base import Encoder
from clothsim.errors import UnknownEncoderError

DEFAULT_ENCODER = "efficientnet_lite0"


class EncoderFactory(Protocol):
    def __call__(self, weights: str | Path | None, device: str) -> Encoder: ...


class FamilyFactory(Protocol):
    def __call__(self, spec: str, weights: str | Path | None, device: str) -> Encoder: ...


@dataclass(frozen=True)
class EncoderInfo:
    """What ``clothsim encoders`` lists."""

    name: str
    dim: int | None
    input_size: int | None
    description: str
    family: bool = False


_FACTORIES: dict[str, tuple[EncoderInfo, EncoderFactory]] = {}
_FAMILIES: dict[str, tuple[EncoderInfo, FamilyFactory]] = {}


def register_encoder(
    name: str, *, dim: int, input_size: int, description: str
) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator registering ``factory(weights, device) -> Encoder`` under ``name``."""

    def decorate(factory: EncoderFactory) -> EncoderFactory:
        if name in _FACTORIES:
            raise ValueError(f"encoder {name!r} is registered twice")
        _FACTORIES[name] = (EncoderInfo(name, dim, input_size, description), factory)
        return factory

    return decorate


def register_encoder_family(prefix: str, *, description: str) -> Callable[[FamilyFactory], FamilyFactory]:
    """Decorator registering ``factory(spec, weights, device) -> Encoder`` for names ``prefix:spec``."""

    def decorate(factory: FamilyFactory) -> FamilyFactory:
        if prefix in _FAMILIES:
            raise ValueError(f"encoder family {prefix!r} is registered twice")
        _FAMILIES[prefix] = (EncoderInfo(f"{prefix}:<spec>", None, None, description, family=True), factory)
        return factory

    return decorate


def _load_builtins() -> None:
    # Importing the modules runs their decorators; kept lazy so `import clothsim` stays cheap.
    from clothsim.encoders import builtin  # noqa: F401


def list_encoders() -> list[EncoderInfo]:
    """Every registered encoder and encoder family, plain names first."""
    _load_builtins()
    return [info for info, _ in _FACTORIES.values()] + [info for info, _ in _FAMILIES.values()]


def create_encoder(
    name: str = DEFAULT_ENCODER, weights: str | Path | None = None, device: str = "cpu"
) -> Encoder:
    """Build a registered encoder.

    Args:
        name: A name from :func:`list_encoders`, or ``family:spec``.
        weights: ``None`` for the official pretrained weights (downloaded and cached on first use where
            that needs a download), ``"random"`` for random initialisation, or a path to a local
            state-dict file.
        device: Torch device string; CPU by default.

    Raises:
        UnknownEncoderError: ``name`` is not registered; the message lists the known names.
        WeightsUnavailableError: no weights could be had; the message says what to download and where.
    """
    _load_builtins()
    if name in _FACTORIES:
        return _FACTORIES[name][1](weights, device)
    prefix, sep, spec = name.partition(":")
    if sep and prefix in _FAMILIES:
        if not spec:
            raise UnknownEncoderError(f"encoder {name!r} needs a spec after '{prefix}:'")
        return _FAMILIES[prefix][1](spec, weights, device)
    known = sorted(_FACTORIES) + [f"{p}:<spec>" for p in sorted(_FAMILIES)]
    raise UnknownEncoderError(f"unknown encoder {name!r}; known encoders: {', '.join(known)}")
