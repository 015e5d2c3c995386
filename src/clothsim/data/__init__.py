"""Catalogue readers, splits and plots; every reader returns a list of :class:`CatalogRecord`.

Names are resolved on first use, so importing this package (as the CLI's parser does) loads no reader,
numpy or matplotlib until one is asked for.
"""

from __future__ import annotations

from clothsim._lazy import lazy_getattr

_EXPORTS = {
    "CatalogRecord": "clothsim.data.records",
    "SPLITS": "clothsim.data.records",
    "CatalogReader": "clothsim.data.registry",
    "list_formats": "clothsim.data.registry",
    "reader_registry": "clothsim.data.registry",
    "detect_format": "clothsim.data.readers",
    "read_catalog": "clothsim.data.readers",
    "read_csv_catalog": "clothsim.data.csv_catalog",
    "write_csv_catalog": "clothsim.data.csv_catalog",
    "read_deepfashion_category": "clothsim.data.deepfashion",
    "read_deepfashion_inshop": "clothsim.data.deepfashion",
    "FASHION_MNIST_CLASSES": "clothsim.data.fashion_mnist",
    "FashionMnistSplit": "clothsim.data.fashion_mnist",
    "load_demo_sample": "clothsim.data.fashion_mnist",
    "load_fashion_mnist": "clothsim.data.fashion_mnist",
    "materialize_demo_sample": "clothsim.data.fashion_mnist",
    "materialize_fashion_mnist": "clothsim.data.fashion_mnist",
    "read_idx": "clothsim.data.fashion_mnist",
    "IMAGE_EXTENSIONS": "clothsim.data.folder",
    "read_folder_catalog": "clothsim.data.folder",
    "FilterResult": "clothsim.data.splits",
    "SplitResult": "clothsim.data.splits",
    "balanced_split": "clothsim.data.splits",
    "category_counts": "clothsim.data.splits",
    "filter_min_count": "clothsim.data.splits",
    "plot_category_distribution": "clothsim.data.plots",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
