"""Image encoders: ``create_encoder(name, weights=...)`` and the plug-in registry behind it.

Names are resolved on first use, so importing this package loads neither torch nor any encoder.
"""

from __future__ import annotations

from clothsim._lazy import lazy_getattr

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


__getattr__ = lazy_getattr(__name__, _EXPORTS)
