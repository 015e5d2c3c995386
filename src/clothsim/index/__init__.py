"""Similarity search backends over feature stores; each backend is a plug-in (``clothsim.index_backends``).

Names are resolved on first use, so importing this package loads no backend.
"""

from __future__ import annotations

from clothsim._lazy import lazy_getattr

_EXPORTS = {
    "IndexBackend": "clothsim.index.base",
    "IndexBackendPlugin": "clothsim.index.base",
    "SearchHit": "clothsim.index.base",
    "ExactIndex": "clothsim.index.exact",
    "backend_registry": "clothsim.index.registry",
    "build_index": "clothsim.index.registry",
    "list_backends": "clothsim.index.registry",
    "open_index": "clothsim.index.registry",
    "topk_cosine": "clothsim.index.topk",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
