"""Image encoders: ``create_encoder(name, weights=...)``, the identity of their vectors
(:class:`EncoderSpec`) and the one factory that builds an encoder from it (:func:`build_encoder`).

Names are resolved on first use, so importing this package loads neither torch nor any encoder.
"""

from __future__ import annotations

from clothsim._lazy import lazy_getattr

_EXPORTS = {
    "DEFAULT_ENCODER": "clothsim.defaults",
    "Encoder": "clothsim.encoders.base",
    "collate": "clothsim.encoders.base",
    "Preprocessing": "clothsim.encoders.preprocessing",
    "EncoderSpec": "clothsim.encoders.spec",
    "EncoderPlugin": "clothsim.encoders.registry",
    "EncoderFamilyPlugin": "clothsim.encoders.registry",
    "EncoderInfo": "clothsim.encoders.registry",
    "list_encoders": "clothsim.encoders.registry",
    "register_encoder": "clothsim.encoders.registry",
    "register_encoder_family": "clothsim.encoders.registry",
    "create_encoder": "clothsim.encoders.factory",
    "build_encoder": "clothsim.encoders.factory",
    "build_network": "clothsim.encoders.factory",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
