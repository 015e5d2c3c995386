"""One entry point for every catalogue format: ``read_catalog(source, format="auto")``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from clothsim.data.csv_catalog import read_csv_catalog
from clothsim.data.deepfashion import is_inshop_partition, read_deepfashion_category, read_deepfashion_inshop
from clothsim.data.fashion_mnist import materialize_demo_sample, materialize_fashion_mnist
from clothsim.data.folder import read_folder_catalog
from clothsim.data.records import CatalogRecord

logger = logging.getLogger(__name__)

FORMATS = ("auto", "folder", "csv", "deepfashion-category", "deepfashion-inshop", "fashion-mnist", "demo")
_ANNO_FOLDERS = ("Anno", "Anno_coarse")


def default_cache_dir() -> Path:
    """``$CLOTHSIM_CACHE``, else ``$XDG_CACHE_HOME/clothsim``, else ``~/.cache/clothsim``."""
    if os.environ.get("CLOTHSIM_CACHE"):
        return Path(os.environ["CLOTHSIM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clothsim"


def detect_format(source: str | os.PathLike[str]) -> str:
    """The format ``read_catalog`` would use for ``source`` with ``format="auto"``.

    Rules, in order: the names ``fashion-mnist`` and ``demo`` (when no such path exists); a ``.csv``
    file; a DeepFashion folder (or its ``Img/``) -- In-shop when it has
    ``Anno/list_bbox_inshop.txt`` or a partition file with an ``item_id`` column, Category and
    Attribute Prediction when ``Anno/`` or ``Anno_coarse/`` has ``list_category_img.txt``;
    otherwise a folder tree.

    Raises:
        FileNotFoundError: ``source`` is neither a known name nor an existing path.
        ValueError: ``source`` is a file but not a ``.csv``.
    """
    path = Path(source).expanduser()
    if not path.exists():
        if str(source).lower() in ("fashion-mnist", "demo"):
            return str(source).lower()
        raise FileNotFoundError(f"catalogue source {source!s} does not exist (nor is it 'fashion-mnist' or 'demo')")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise ValueError(f"{path}: a catalogue file must be a .csv; folders are read as image trees")
    for root in (path, path.parent) if path.name.lower() == "img" else (path,):
        if (root / "Anno" / "list_bbox_inshop.txt").is_file() or is_inshop_partition(
            root / "Eval" / "list_eval_partition.txt"
        ):
            return "deepfashion-inshop"
        if any((root / anno / "list_category_img.txt").is_file() for anno in _ANNO_FOLDERS):
            return "deepfashion-category"
    return "folder"


def read_catalog(source: str | os.PathLike[str], format: str = "auto", **options: Any) -> list[CatalogRecord]:
    """Read a catalogue from any supported source.

    Args:
        source: A folder, a ``.csv`` file, a DeepFashion folder, or the names ``"fashion-mnist"``
            (the Debian idx files written out as PNG) or ``"demo"`` (the packaged sample).
        format: One of :data:`FORMATS`; ``"auto"`` uses :func:`detect_format`.
        **options: Passed to the reader: ``read_csv_catalog`` (column names, ``image_root``),
            ``read_deepfashion_category`` (``use_coarse``), ``read_deepfashion_inshop``
            (``category_level``), ``materialize_fashion_mnist`` (``root``, ``splits``, ``per_class``,
            ``seed``). For ``fashion-mnist`` and ``demo``, ``out_dir`` is where the PNG files go
            (default: a folder under :func:`default_cache_dir`).

    Returns:
        The catalogue records.

    Raises:
        ValueError: Unknown ``format`` or unreadable source.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown catalogue format {format!r}; expected one of {FORMATS}")
    kind = detect_format(source) if format == "auto" else format
    logger.debug("reading %s as %s", source, kind)
    if kind == "csv":
        return read_csv_catalog(source, **options)
    if kind == "deepfashion-category":
        return read_deepfashion_category(source, **options)
    if kind == "deepfashion-inshop":
        return read_deepfashion_inshop(source, **options)
    if kind == "fashion-mnist":
        out_dir = options.pop("out_dir", None) or default_cache_dir() / "fashion-mnist"
        return materialize_fashion_mnist(out_dir, **options)
    if kind == "demo":
        out_dir = options.pop("out_dir", None) or default_cache_dir() / "demo-sample"
        return materialize_demo_sample(out_dir, **options)
    if options:
        raise ValueError(f"the folder reader takes no options, got {sorted(options)}")
    return read_folder_catalog(source)
