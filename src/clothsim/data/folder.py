"""Catalogue from a folder tree: one folder per category, optionally under split folders.

Three layouts are understood::

    root/<image>                            (no categories: a flat folder of photos)
    root/<category>/<image>                 (split is None)
    root/<split>/<category>/<image>         (split is train / validation / test)

Split folder names are matched case-insensitively; ``val`` and ``valid`` mean ``validation``.
Images may sit deeper inside a category folder; the category is always the top folder's name. Images
directly in ``root`` have no category (``None``), beside category folders or alone; commands that need
labels (evaluate, train) refuse such a catalogue and say why.

Every entry with an image extension is a catalogue entry, including those that cannot be an image: a
dangling symbolic link, a link loop, a folder named ``x.jpg``, an unreadable file, a named pipe, a socket
or a device. They are kept in the catalogue so that indexing reports each of them by path with the
reason, instead of leaving them out silently. A folder that cannot be listed (no permission) is an
error naming it: reading on without it would make an index sync delete every photo it holds.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from clothsim.data.records import CatalogRecord
from clothsim.errors import DataError, EmptyCatalogError, UsageError

logger = logging.getLogger(__name__)

#: File extensions (lower case, with the dot) treated as images.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

#: Folder names (lower case) recognised as splits, and the split each one means.
SPLIT_FOLDER_NAMES = {
    "train": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
}

_SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an image by its extension (case-insensitive), skipping hidden files.

    Hidden files are skipped because macOS archives carry ``._name.jpg`` resource forks that are not
    images.
    """
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def read_folder_catalog(root: str | os.PathLike[str]) -> list[CatalogRecord]:
    """Read a folder-per-category tree, with or without split folders above the categories.

    Args:
        root: The folder holding either the category folders or the split folders.

    Returns:
        One record per image with an absolute path, sorted by split (train, validation, test),
        then category, then path. ``split`` is ``None`` when there are no split folders.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: Split folders and category folders are mixed at the top level.
        EmptyCatalogError: No image was found under ``root``.
    """
    root_path = Path(os.path.abspath(Path(root).expanduser()))
    if not root_path.is_dir():
        raise FileNotFoundError(f"catalogue folder {root_path} does not exist or is not a folder")

    subdirs = sorted(p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in subdirs if p.name.lower() in SPLIT_FOLDER_NAMES]

    records: list[CatalogRecord] = []
    if split_dirs:
        _warn_loose_images(root_path)
        others = [p.name for p in subdirs if p not in split_dirs and _has_images(p)]
        if others:
            raise ValueError(
                f"{root_path}: top-level folders mix splits {[p.name for p in split_dirs]} with "
                f"other folders holding images {others}; use one layout or point at a split folder"
            )
        seen: dict[str, str] = {}
        for split_dir in split_dirs:
            split = SPLIT_FOLDER_NAMES[split_dir.name.lower()]
            if split in seen:
                raise ValueError(
                    f"{root_path}: folders {seen[split]!r} and {split_dir.name!r} both mean split {split!r}"
                )
            seen[split] = split_dir.name
            _warn_loose_images(split_dir)
            records.extend(_read_categories(split_dir, split))
    else:
        records.extend(_read_categories(root_path, None))
        loose = _loose_images(root_path)
        if loose and records:
            logger.warning("%s: %d images are not inside a category folder (e.g. %s); they are indexed "
                           "without a category", root_path, len(loose), loose[0].name)
        records.extend(CatalogRecord(path=str(p), category=None, split=None) for p in loose)

    if not records:
        raise EmptyCatalogError(
            f"no images under {root_path} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} "
            "in it, in <category>/ or in <split>/<category>/ folders)"
        )
    records.sort(key=lambda r: (_SPLIT_ORDER.get(r.split or "", -1), r.category or "", r.path))
    logger.info(
        "read %d images in %d categories from %s",
        len(records),
        len({r.category for r in records if r.category is not None}),
        root_path,
    )
    return records


def _entries(category_dir: Path, unreadable: list[OSError]) -> list[Path]:
    """Every entry named like an image under ``category_dir`` (whatever it turns out to be: a file, a
    link that leads nowhere, a folder, a FIFO...); folders that cannot be listed go to ``unreadable``.
    Links to folders are not followed, as ``Path.rglob`` does not."""
    found = []
    for parent, dirs, files in os.walk(category_dir, onerror=unreadable.append):
        dirs.sort()
        found.extend(Path(parent) / name for name in dirs + files if is_image_file(Path(name)))
    return sorted(found)


def _unreadable_error(folder: Path, unreadable: list[OSError]) -> DataError:
    names = ", ".join(f"{exc.filename} ({exc.strerror or exc})" for exc in unreadable[:5])
    more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
    return DataError(f"{folder}: cannot list {names}{more}; its photos would be dropped (and an index sync would "
                     "delete them). Fix the folder's permissions, or move it out of the catalogue, then run again")


def _read_categories(folder: Path, split: str | None) -> list[CatalogRecord]:
    records = []
    odd: list[Path] = []
    unreadable: list[OSError] = []
    for category_dir in sorted(folder.iterdir()):
        if not category_dir.is_dir() or category_dir.name.startswith("."):
            continue
        for image in _entries(category_dir, unreadable):
            records.append(CatalogRecord(path=str(image), category=category_dir.name, split=split))
            if not image.is_file():
                odd.append(image)
    if unreadable:
        raise _unreadable_error(folder, unreadable)
    if odd:
        logger.warning("%s: %d entries named like images are not readable files (e.g. %s); indexing reports "
                       "each of them", folder, len(odd), odd[0])
    return records


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and is_image_file(p) for p in folder.rglob("*"))


def _loose_images(folder: Path) -> list[Path]:
    """The entries named like images directly in ``folder`` (not in a sub-folder), sorted."""
    return sorted(p for p in folder.iterdir() if is_image_file(p) and not p.is_dir())


def _warn_loose_images(folder: Path) -> None:
    # Beside split folders, an image outside any category folder has neither split nor label; say so
    # instead of dropping it silently.
    loose = _loose_images(folder)
    if loose:
        logger.warning(
            "%s: skipped %d images that are not inside a category folder (e.g. %s)",
            folder,
            len(loose),
            loose[0].name,
        )


class FolderReader:
    """The ``folder`` format: a flat folder of photos, or one folder per category, optionally under split
    folders."""

    description = "a folder of photos: flat, or a folder per category, optionally under train/validation/test"
    detect_priority = 0  # any folder qualifies, so it is asked last

    def detect(self, source: str) -> bool:
        return Path(source).expanduser().is_dir()

    def read(self, source: str, **options: object) -> list[CatalogRecord]:
        if options:
            raise UsageError(f"the folder reader takes no options, got {sorted(options)}")
        return read_folder_catalog(source)
