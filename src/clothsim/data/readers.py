"""One entry point for every catalogue format: ``read_catalog(source, format="auto")``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from clothsim.data.records import CatalogRecord
from clothsim.user_dirs import default_cache_dir
from clothsim.data.registry import reader_registry
from clothsim.errors import DataError, UsageError

logger = logging.getLogger(__name__)

AUTO = "auto"

__all__ = ["AUTO", "default_cache_dir", "detect_format", "read_catalog"]


def detect_format(source: str | os.PathLike[str]) -> str:
    """The format ``read_catalog`` would use for ``source`` with ``format="auto"``.

    Every reader plug-in is asked, highest ``detect_priority`` first; the built-ins recognise, in
    order: the names ``fashion-mnist`` and ``demo`` (when no such path exists); a ``.csv`` file; a
    DeepFashion folder (or its ``Img/``) -- In-shop when it has ``Anno/list_bbox_inshop.txt`` or a
    partition file with an ``item_id`` column, Category and Attribute Prediction when ``Anno/`` or
    ``Anno_coarse/`` has ``list_category_img.txt``; otherwise a folder tree.

    Raises:
        FileNotFoundError: ``source`` is neither a name a reader knows nor an existing path.
        DataError: ``source`` exists but no reader recognises it (e.g. a file that is not a ``.csv``).
    """
    text = str(source)
    readers = sorted(reader_registry.items(), key=lambda item: (-item[1].detect_priority, item[0]))
    for name, reader in readers:
        try:
            if reader.detect(text):
                return name
        except Exception as exc:  # a third-party detector's bug must not hide the other formats
            logger.warning("catalogue reader %r failed while detecting %s: %s", name, text, exc)
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"catalogue source {text} does not exist (nor is it a name a reader knows, "
                                "such as 'fashion-mnist' or 'demo')")
    if path.is_file():
        raise DataError(f"{path}: no reader recognises this file (a catalogue file must be a .csv; folders "
                        f"are read as image trees); formats: {', '.join(reader_registry.names())}")
    raise DataError(f"{path}: no reader recognises this source; formats: {', '.join(reader_registry.names())}")


def read_catalog(source: str | os.PathLike[str], format: str = AUTO, **options: Any) -> list[CatalogRecord]:
    """Read a catalogue from any supported source.

    Args:
        source: A folder, a ``.csv`` file, a DeepFashion folder, or the names ``"fashion-mnist"``
            (the Debian idx files written out as PNG) or ``"demo"`` (the packaged Fashion-MNIST sample).
        format: A reader name (see :func:`clothsim.data.registry.list_formats`) or ``"auto"`` to use
            :func:`detect_format`.
        **options: Passed to the reader: ``csv`` (column names, ``image_root``),
            ``deepfashion-category`` (``use_coarse``), ``deepfashion-inshop`` (``category_level``),
            ``fashion-mnist`` (``root``, ``splits``, ``per_class``, ``seed``). For ``fashion-mnist``
            and ``demo``, ``out_dir`` is where the PNG files go (default: a folder under
            :func:`default_cache_dir`).

    Returns:
        The catalogue records.

    Raises:
        UsageError: Unknown ``format`` or options the reader does not take.
        FileNotFoundError, DataError, AnnotationFormatError: unreadable source.
    """
    if format != AUTO and format not in reader_registry:
        raise UsageError(f"unknown catalogue format {format!r}; expected one of "
                         f"{[AUTO, *reader_registry.names()]}")
    kind = detect_format(source) if format == AUTO else format
    logger.debug("reading %s as %s", source, kind)
    return reader_registry.get(kind).read(str(source), **options)
