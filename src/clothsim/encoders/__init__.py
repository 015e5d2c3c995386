"""Image encoders: ``create_encoder(name, weights=...)`` and the plug-in registry behind it.

Names are resolved on first use, so importing this package loads neither torch nor any encoder.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_ENCODER": "clothsim.defaults",
    "Encoder": "clothsim.encoders.base",
    "Preprocessing": "clothsim.encoders.base",
    "EncoderPlugin": "clothsim.encoders.registry",
    "EncoderFamilyPlugin": "clothsim.encoders.registry",
    "EncoderInfo": "clothsim.encoders.registry",
    "create_encoder": "clothsim.encoders.registry",
    "list_encoders": "clothsim.encoders.registry",
    "register_encoder": "clothsim.encoders.registry",
    "register_encoder_family": "clothsim.encoders.registry",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clothsim.encoders' has no attribute {name!r}")
