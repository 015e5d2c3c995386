"""Readers for two DeepFashion benchmarks (Liu et al., CVPR 2016), from their annotation files.

Category and Attribute Prediction::

    root/Anno/ (or Anno_coarse/)  list_category_cloth.txt  list_category_img.txt
                                  [list_attr_cloth.txt  list_attr_img.txt]  [list_bbox.txt]
    root/Eval/                    [list_eval_partition.txt]
    root/Img/img/<Product>/img_00000001.jpg     (or root/img/...)

In-shop Clothes Retrieval::

    root/Eval/list_eval_partition.txt          (image_name item_id evaluation_status)
    root/Anno/[list_bbox_inshop.txt]
    root/Img/img/MEN/Denim/id_00000080/01_1_front.jpg   (or root/img/...)

Every list file has the entry count on line 1 and a header on line 2. Image names in the files are
relative to the folder that holds ``img/``. ``root`` may be the dataset folder or its ``Img/``.
``Anno_fine/`` (the 2020 re-annotation, with per-split files) is not read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Container
from dataclasses import dataclass
from itertools import compress
from pathlib import Path, PurePosixPath

from clothsim.data._listfile import iter_entries, parse_bbox, parse_int, read_header, split_fields
from clothsim.data.records import CatalogRecord
from clothsim.errors import AnnotationFormatError, DataError, EmptyCatalogError, UsageError

logger = logging.getLogger(__name__)

_CATEGORY_SPLITS = {"train": "train", "val": "validation", "test": "test"}
_INSHOP_SPLITS = {"train": "train", "query": "query", "gallery": "gallery"}
_ATTRIBUTE_VALUES = frozenset({"1", "-1", "0"})  # 1 present; -1 absent (0 in some releases)
CATEGORY_LEVELS = ("gender_category", "category")


@dataclass(frozen=True)
class DeepFashionLayout:
    """Where a DeepFashion copy keeps its parts.

    Attributes:
        root: The dataset folder (holds ``Anno*/`` and ``Eval/``).
        image_base: The folder holding ``img/``; image names in the list files are relative to it.
    """

    root: Path
    image_base: Path

    def image_path(self, name: str) -> str:
        """Absolute path of an image named as in the list files."""
        return str(self.image_base.joinpath(*PurePosixPath(name).parts))


def locate_deepfashion(root: str | os.PathLike[str]) -> DeepFashionLayout:
    """Find the dataset folder and the image folder from the dataset root or its ``Img/`` folder.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: Neither ``root`` nor its parent holds ``Anno/``, ``Anno_coarse/`` or ``Eval/``.
    """
    given = Path(os.path.abspath(Path(root).expanduser()))
    if not given.is_dir():
        raise FileNotFoundError(f"DeepFashion folder {given} does not exist or is not a folder")
    markers = ("Anno", "Anno_coarse", "Anno_fine", "Eval")
    candidates = [given, given.parent] if given.name.lower() == "img" else [given]
    dataset = next((c for c in candidates if any((c / m).is_dir() for m in markers)), None)
    if dataset is None:
        raise DataError(f"{given} is not a DeepFashion folder: expected one of {list(markers)} inside it")
    for base in (dataset / "Img", dataset, given):
        if (base / "img").is_dir():
            return DeepFashionLayout(dataset, base)
    base = dataset / "Img" if (dataset / "Img").is_dir() else dataset
    # Annotations are still useful without the images (e.g. to plot the category distribution).
    logger.warning("%s: no img/ folder found; image paths will point under %s", dataset, base)
    return DeepFashionLayout(dataset, base)


def read_deepfashion_category(root: str | os.PathLike[str], use_coarse: bool | None = None) -> list[CatalogRecord]:
    """Read DeepFashion Category and Attribute Prediction.

    Categories come from ``list_category_cloth.txt`` (50 names; labels in ``list_category_img.txt``
    are 1-based indices into it). Attributes (those with value 1), boxes and the train/val/test
    partition are added when their files exist.

    Args:
        root: The dataset folder or its ``Img/`` folder.
        use_coarse: ``True`` reads ``Anno_coarse/``, ``False`` reads ``Anno/``, ``None`` takes
            ``Anno/`` if present, else ``Anno_coarse/``.

    Returns:
        Records in the order of ``list_category_img.txt``; ``split`` is ``None`` without a partition
        file (and ``"validation"`` where the file says ``val``).

    Raises:
        FileNotFoundError: The folder or a required list file is missing.
        AnnotationFormatError: A list file is malformed (the message names the file and line).
    """
    layout = locate_deepfashion(root)
    anno = _annotation_folder(layout.root, use_coarse)
    categories = _read_names(anno / "list_category_cloth.txt", "category_name")

    labels_file = _require(anno / "list_category_img.txt")
    labels: dict[str, str] = {}
    for number, text in iter_entries(labels_file, "image_name"):
        name, token = split_fields(labels_file, number, text, 1, "image_name category_label")
        label = parse_int(labels_file, number, token, "category_label")
        if not 1 <= label <= len(categories):
            raise AnnotationFormatError(
                str(labels_file), number, f"category_label {label} is outside 1..{len(categories)}"
            )
        _check_new(labels, name, labels_file, number)
        labels[name] = categories[label - 1]
    if not labels:
        raise EmptyCatalogError(f"{labels_file} lists no images")

    attributes = _read_attributes(anno, labels)
    boxes = _read_boxes(anno / "list_bbox.txt", labels)
    splits = _read_category_partition(layout.root / "Eval" / "list_eval_partition.txt", labels)

    records = [
        CatalogRecord(
            path=layout.image_path(name),
            category=category,
            split=splits.get(name),
            attributes=attributes.get(name, ()),
            bbox=boxes.get(name),
        )
        for name, category in labels.items()
    ]
    logger.info("read %d DeepFashion images in %d categories from %s", len(records), len(set(labels.values())), anno)
    return records


def read_deepfashion_inshop(
    root: str | os.PathLike[str], category_level: str = "gender_category"
) -> list[CatalogRecord]:
    """Read DeepFashion In-shop Clothes Retrieval.

    The category is taken from the image path ``img/<MEN|WOMEN>/<Category>/<item>/<file>``: with
    ``category_level="gender_category"`` it is ``"MEN/Denim"`` (the format's own 23 groups, since
    the same category name can occur for both genders), with ``"category"`` it is ``"Denim"``.

    Args:
        root: The dataset folder or its ``Img/`` folder.
        category_level: ``"gender_category"`` or ``"category"``.

    Returns:
        Records in the order of ``Eval/list_eval_partition.txt`` with ``item_id`` set and ``split``
        ``train``/``query``/``gallery``; ``bbox`` from ``Anno/list_bbox_inshop.txt`` when present.

    Raises:
        ValueError: Unknown ``category_level``.
        FileNotFoundError: The folder or the partition file is missing.
        AnnotationFormatError: A list file is malformed (the message names the file and line).
    """
    if category_level not in CATEGORY_LEVELS:
        raise UsageError(f"category_level must be one of {CATEGORY_LEVELS}, got {category_level!r}")
    layout = locate_deepfashion(root)
    partition = _require(layout.root / "Eval" / "list_eval_partition.txt")

    entries: dict[str, tuple[str, str, str]] = {}
    for number, text in iter_entries(partition, "image_name"):
        name, item_id, status = split_fields(partition, number, text, 2, "image_name item_id evaluation_status")
        if status not in _INSHOP_SPLITS:
            raise AnnotationFormatError(
                str(partition), number, f"evaluation_status must be train, query or gallery, found {status!r}"
            )
        category = _inshop_category(name, category_level, partition, number)
        _check_new(entries, name, partition, number)
        entries[name] = (category, item_id, _INSHOP_SPLITS[status])
    if not entries:
        raise EmptyCatalogError(f"{partition} lists no images")

    boxes = _read_boxes(layout.root / "Anno" / "list_bbox_inshop.txt", entries,
                        int_fields=("clothes_type", "pose_type"))
    records = [
        CatalogRecord(
            path=layout.image_path(name), category=category, split=split, item_id=item_id, bbox=boxes.get(name)
        )
        for name, (category, item_id, split) in entries.items()
    ]
    logger.info(
        "read %d In-shop images of %d items from %s",
        len(records),
        len({r.item_id for r in records}),
        layout.root,
    )
    return records


def is_inshop_partition(path: Path) -> bool:
    """Whether an ``Eval/list_eval_partition.txt`` is In-shop's (its header names ``item_id``)."""
    return path.is_file() and "item_id" in read_header(path)


def _annotation_folder(root: Path, use_coarse: bool | None) -> Path:
    names = {True: ["Anno_coarse"], False: ["Anno"], None: ["Anno", "Anno_coarse"]}[use_coarse]
    for name in names:
        if (root / name / "list_category_img.txt").is_file():
            return root / name
    raise FileNotFoundError(
        f"{root}: no list_category_img.txt in {' or '.join(n + '/' for n in names)}"
        + (" (Anno_fine/ is not supported)" if (root / "Anno_fine").is_dir() else "")
    )


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"required DeepFashion file {path} is missing")
    return path


def _check_new(seen: dict, name: str, path: Path, number: int) -> None:
    if name in seen:
        raise AnnotationFormatError(str(path), number, f"image {name!r} is listed twice")


def _read_names(path: Path, header_start: str) -> list[str]:
    """Names from ``list_category_cloth.txt`` / ``list_attr_cloth.txt`` (``name type`` lines)."""
    _require(path)
    names = []
    for number, text in iter_entries(path, header_start):
        name, kind = split_fields(path, number, text, 1, f"{header_start} type", image=False)
        parse_int(path, number, kind, "type")
        names.append(name)
    if not names:
        raise AnnotationFormatError(str(path), 1, "the file lists no names")
    return names


def _read_attributes(anno: Path, labels: dict[str, str]) -> dict[str, tuple[str, ...]]:
    names_file, values_file = anno / "list_attr_cloth.txt", anno / "list_attr_img.txt"
    if not values_file.is_file():
        return {}
    if not names_file.is_file():
        logger.warning("%s exists without %s; attributes are not read", values_file, names_file.name)
        return {}
    names = _read_names(names_file, "attribute_name")
    what = f"image_name and {len(names)} attribute values"
    found: dict[str, tuple[str, ...]] = {}
    unknown = 0
    for number, text in iter_entries(values_file, "image_name"):
        name, *values = split_fields(values_file, number, text, len(names), what)
        # The full file has 289,222 lines of 1,000 values: check the set of values, not each one.
        if not _ATTRIBUTE_VALUES.issuperset(values):
            index, value = next((i, v) for i, v in enumerate(values) if v not in _ATTRIBUTE_VALUES)
            raise AnnotationFormatError(
                str(values_file), number, f"attribute value {index + 1} is {value!r}; expected 1, -1 or 0"
            )
        present = tuple(compress(names, map("1".__eq__, values)))  # C-level loop over 1,000 values
        _check_new(found, name, values_file, number)
        if name in labels:
            found[name] = present
        else:
            unknown += 1
    _warn_unknown(unknown, values_file)
    return found


def _read_boxes(
    path: Path, known: Container[str], int_fields: tuple[str, ...] = ()
) -> dict[str, tuple[int, int, int, int]]:
    """Boxes of a ``list_bbox*.txt``: ``image_name [int fields...] x_1 y_1 x_2 y_2`` per line.

    Category and Attribute Prediction's file has no extra fields; In-shop's has ``clothes_type
    pose_type``, checked as integers and otherwise unused.
    """
    if not path.is_file():
        return {}
    columns = " ".join(("image_name", *int_fields, "x_1 y_1 x_2 y_2"))
    boxes: dict[str, tuple[int, int, int, int]] = {}
    unknown = 0
    for number, text in iter_entries(path, "image_name"):
        name, *rest = split_fields(path, number, text, len(int_fields) + 4, columns)
        for field_name, value in zip(int_fields, rest):
            parse_int(path, number, value, field_name)
        _check_new(boxes, name, path, number)
        box = parse_bbox(path, number, rest[len(int_fields):])
        if name in known:
            boxes[name] = box
        else:
            unknown += 1
    _warn_unknown(unknown, path)
    return boxes


def _read_category_partition(path: Path, labels: dict[str, str]) -> dict[str, str]:
    if not path.is_file():
        logger.info("%s not found; splits are left unset", path)
        return {}
    if is_inshop_partition(path):
        raise AnnotationFormatError(
            str(path), 2, "this is an In-shop partition (it has item_id); use read_deepfashion_inshop"
        )
    splits: dict[str, str] = {}
    unknown = 0
    for number, text in iter_entries(path, "image_name"):
        name, status = split_fields(path, number, text, 1, "image_name evaluation_status")
        if status not in _CATEGORY_SPLITS:
            raise AnnotationFormatError(
                str(path), number, f"evaluation_status must be train, val or test, found {status!r}"
            )
        _check_new(splits, name, path, number)
        if name in labels:
            splits[name] = _CATEGORY_SPLITS[status]
        else:
            unknown += 1
    _warn_unknown(unknown, path)
    missing = len(labels) - len(splits)
    if missing:
        logger.warning("%s: %d images have no evaluation_status; their split is unset", path, missing)
    return splits


def _inshop_category(name: str, level: str, path: Path, number: int) -> str:
    parts = PurePosixPath(name).parts
    lowered = [p.lower() for p in parts]
    start = lowered.index("img") + 1 if "img" in lowered else 0
    # img/<gender>/<category>/<item>/<file>: four parts after img/.
    if len(parts) - start < 4:
        raise AnnotationFormatError(
            str(path), number, f"image name {name!r} is not img/<MEN|WOMEN>/<Category>/<item_id>/<file>"
        )
    gender, category = parts[start], parts[start + 1]
    return f"{gender}/{category}" if level == "gender_category" else category


def _warn_unknown(count: int, path: Path) -> None:
    if count:
        logger.warning("%s: ignored %d images that the main list does not have", path, count)


def _deepfashion_roots(source: str) -> tuple[Path, ...]:
    path = Path(source).expanduser()
    if not path.is_dir():
        return ()
    return (path, path.parent) if path.name.lower() == "img" else (path,)


class DeepFashionInshopReader:
    """The ``deepfashion-inshop`` format: the In-shop Clothes Retrieval benchmark's folder."""

    description = "DeepFashion In-shop Clothes Retrieval (Anno/list_bbox_inshop.txt, Eval/list_eval_partition.txt)"
    # Asked before the Category reader: an In-shop folder may carry Category files as well.
    detect_priority = 40

    def detect(self, source: str) -> bool:
        return any((root / "Anno" / "list_bbox_inshop.txt").is_file()
                   or is_inshop_partition(root / "Eval" / "list_eval_partition.txt")
                   for root in _deepfashion_roots(source))

    def read(self, source: str, **options: object) -> list[CatalogRecord]:
        return read_deepfashion_inshop(source, **options)  # type: ignore[arg-type]


class DeepFashionCategoryReader:
    """The ``deepfashion-category`` format: Category and Attribute Prediction's folder."""

    description = "DeepFashion Category and Attribute Prediction (Anno/ or Anno_coarse/list_category_img.txt)"
    detect_priority = 30

    def detect(self, source: str) -> bool:
        return any((root / anno / "list_category_img.txt").is_file()
                   for root in _deepfashion_roots(source) for anno in ("Anno", "Anno_coarse"))

    def read(self, source: str, **options: object) -> list[CatalogRecord]:
        return read_deepfashion_category(source, **options)  # type: ignore[arg-type]
