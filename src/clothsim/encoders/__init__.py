"""Image encoders: ``create_encoder(name, weights=...)`` and the registry behind it."""

from clothsim.encoders.base import Encoder, Preprocessing
from clothsim.encoders.registry import (
    DEFAULT_ENCODER,
    create_encoder,
    list_encoders,
    register_encoder,
    register_encoder_family,
)

__all__ = [
    "DEFAULT_ENCODER",
    "Encoder",
    "Preprocessing",
    "create_encoder",
    "list_encoders",
    "register_encoder",
    "register_encoder_family",
]
