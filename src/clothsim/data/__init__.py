"""Catalogue readers, splits and plots; every reader returns a list of :class:`CatalogRecord`.

``plot_category_distribution`` is imported on first use so that reading a catalogue does not load
matplotlib.
"""

from __future__ import annotations

from typing import Any

from clothsim.data.csv_catalog import read_csv_catalog, write_csv_catalog
from clothsim.data.deepfashion import read_deepfashion_category, read_deepfashion_inshop
from clothsim.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FashionMnistSplit,
    load_demo_sample,
    load_fashion_mnist,
    materialize_demo_sample,
    materialize_fashion_mnist,
    read_idx,
)
from clothsim.data.folder import IMAGE_EXTENSIONS, read_folder_catalog
from clothsim.data.readers import FORMATS, detect_format, read_catalog
from clothsim.data.records import SPLITS, CatalogRecord
from clothsim.data.splits import FilterResult, SplitResult, balanced_split, category_counts, filter_min_count

__all__ = [
    "CatalogRecord",
    "FASHION_MNIST_CLASSES",
    "FORMATS",
    "FashionMnistSplit",
    "FilterResult",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "SplitResult",
    "balanced_split",
    "category_counts",
    "detect_format",
    "filter_min_count",
    "load_demo_sample",
    "load_fashion_mnist",
    "materialize_demo_sample",
    "materialize_fashion_mnist",
    "plot_category_distribution",
    "read_catalog",
    "read_csv_catalog",
    "read_deepfashion_category",
    "read_deepfashion_inshop",
    "read_folder_catalog",
    "read_idx",
    "write_csv_catalog",
]


def __getattr__(name: str) -> Any:
    if name == "plot_category_distribution":
        from clothsim.data.plots import plot_category_distribution

        return plot_category_distribution
    raise AttributeError(f"module 'clothsim.data' has no attribute {name!r}")
