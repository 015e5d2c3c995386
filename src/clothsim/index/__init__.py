"""Similarity search backends over feature stores; each backend is a plug-in (``clothsim.index_backends``)."""

from clothsim.index.base import IndexBackend, IndexBackendPlugin, SearchHit
from clothsim.index.exact import ExactIndex
from clothsim.index.registry import backend_registry, build_index, list_backends, open_index
from clothsim.index.topk import topk_cosine

__all__ = ["ExactIndex", "IndexBackend", "IndexBackendPlugin", "SearchHit", "backend_registry", "build_index",
           "list_backends", "open_index", "topk_cosine"]
