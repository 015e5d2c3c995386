"""clothsim: visual clothing similarity (top-k similar garments from pretrained CNN features).

The public API, importable from here::

    from clothsim import SimilarityIndex, CatalogRecord, create_encoder, list_encoders, read_catalog

Names are resolved on first use, so ``import clothsim`` does not load torch.
"""

from __future__ import annotations

import logging

from clothsim._lazy import lazy_getattr

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS = {
    "SimilarityIndex": "clothsim.similarity_index",
    "CatalogRecord": "clothsim.data.records",
    "read_catalog": "clothsim.data",
    "balanced_split": "clothsim.data",
    "filter_min_count": "clothsim.data",
    "create_encoder": "clothsim.encoders",
    "list_runtimes": "clothsim.runtimes",
    "list_backends": "clothsim.index",
    "list_encoders": "clothsim.encoders",
    "register_encoder": "clothsim.encoders",
    "extract_features": "clothsim.features",
    "FeatureStore": "clothsim.features",
    "evaluate_retrieval": "clothsim.metrics",
    "load_image": "clothsim.images",
    "run_demo": "clothsim.demo",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__ = lazy_getattr(__name__, _EXPORTS)
