"""Similarity search backends over feature stores."""

from clothsim.index.base import IndexBackend, SearchHit
from clothsim.index.exact import ExactIndex, open_index
from clothsim.index.topk import topk_cosine

__all__ = ["ExactIndex", "IndexBackend", "SearchHit", "open_index", "topk_cosine"]
