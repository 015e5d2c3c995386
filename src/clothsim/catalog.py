"""Deprecated: ``Catalog`` is now :class:`clothsim.SimilarityIndex` (the folder is an "index" everywhere)."""

from __future__ import annotations

import warnings
from typing import Any

from clothsim.similarity_index import ImageLike, SimilarityIndex

__all__ = ["Catalog", "ImageLike"]


class Catalog(SimilarityIndex):
    """The old name of :class:`clothsim.SimilarityIndex`; kept so existing scripts keep working."""

    @staticmethod
    def _warn() -> None:
        warnings.warn("clothsim.Catalog is now clothsim.SimilarityIndex (same methods)", DeprecationWarning,
                      stacklevel=3)

    @classmethod
    def build(cls, *args: Any, **kwargs: Any):  # type: ignore[override]
        cls._warn()
        return super().build(*args, **kwargs)

    @classmethod
    def open(cls, *args: Any, **kwargs: Any):  # type: ignore[override]
        cls._warn()
        return super().open(*args, **kwargs)
