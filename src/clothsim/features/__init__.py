"""Feature extraction into, and reading from, on-disk feature stores (names resolved on first use)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExtractionReport": "clothsim.features.extract",
    "extract_features": "clothsim.features.extract",
    "FeatureStore": "clothsim.features.store",
    "StoredItem": "clothsim.features.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clothsim.features' has no attribute {name!r}")
