"""Feature extraction into, and reading from, on-disk feature stores (names resolved on first use)."""

from __future__ import annotations

from clothsim._lazy import lazy_getattr

_EXPORTS = {
    "ExtractionReport": "clothsim.features.extract",
    "extract_features": "clothsim.features.extract",
    "FeatureStore": "clothsim.features.store",
    "StoredItem": "clothsim.features.store",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
