"""Catalogue as a CSV file: one row per image, with a header naming the columns.

Only the path column is required; without a category column the catalogue has no categories. Optional columns (split, item id, attributes,
bounding box) are read when the header has them; pass ``None`` as a column name to ignore one.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from clothsim.data.records import SPLITS, CatalogRecord
from clothsim.errors import AnnotationFormatError, DataError, EmptyCatalogError
from clothsim.fileio import atomic_path

logger = logging.getLogger(__name__)

_ATTRIBUTE_SEPARATORS = re.compile(r"[|;]")
_BBOX_SEPARATORS = re.compile(r"[\s,;]+")
_SPLIT_ALIASES = {"val": "validation", "valid": "validation"}


def read_csv_catalog(
    csv_path: str | os.PathLike[str],
    path_column: str = "path",
    category_column: str = "category",
    split_column: str | None = "split",
    item_id_column: str | None = "item_id",
    attributes_column: str | None = "attributes",
    image_root: str | os.PathLike[str] | None = None,
    bbox_column: str | None = "bbox",
) -> list[CatalogRecord]:
    """Read a catalogue CSV (UTF-8, optional BOM, comma-separated, first row is the header).

    Args:
        csv_path: The CSV file.
        path_column: Column with the image path; relative paths are resolved against ``image_root``.
        category_column: Column with the category label; where the header has it, it must be non-empty
            on every row; without it, the records have no category (``None``).
        split_column: Optional column with ``train``/``validation``/``test``/``query``/``gallery``
            (``val``/``valid`` accepted; empty means unknown).
        item_id_column: Optional column with the garment identity.
        attributes_column: Optional column with attribute names separated by ``|`` or ``;``.
        image_root: Folder that relative paths are relative to; defaults to the CSV's folder.
        bbox_column: Optional column with ``x1 y1 x2 y2`` (separated by spaces, commas or semicolons).

    Returns:
        One record per data row, in file order, with absolute paths.

    Raises:
        FileNotFoundError: The CSV file does not exist.
        AnnotationFormatError: A required column is missing, or a row is malformed (the message
            names the file and line).
        EmptyCatalogError: The file has a header but no rows.
    """
    path = Path(csv_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"catalogue CSV {path} does not exist")
    base = Path(image_root).expanduser() if image_root is not None else path.parent
    base = Path(os.path.abspath(base))

    records: list[CatalogRecord] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames  # reads the first row: it can be undecodable or malformed too
        except csv.Error as exc:
            raise AnnotationFormatError(str(path), 1, f"CSV syntax error: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise AnnotationFormatError(str(path), None, f"not UTF-8 text: {exc}") from exc
        if not header:
            raise AnnotationFormatError(str(path), 1, "empty file: expected a header row")
        if path_column not in header:
            raise AnnotationFormatError(
                str(path), 1, f"missing required column {path_column!r}; the header has {list(header)}"
            )
        if category_column not in header:
            logger.info("%s has no %r column: its images have no category", path, category_column)
            category_column = None  # type: ignore[assignment]
        optional = {
            name: column if column is not None and column in header else None
            for name, column in (
                ("split", split_column),
                ("item_id", item_id_column),
                ("attributes", attributes_column),
                ("bbox", bbox_column),
            )
        }
        try:
            for row in reader:
                line = reader.line_num
                if None in row:  # DictReader files surplus fields under the key None
                    raise AnnotationFormatError(
                        str(path), line, f"{len(header) + len(row[None])} fields but the header has {len(header)}"
                    )
                records.append(_parse_row(row, path, line, base, path_column, category_column, optional))
        except csv.Error as exc:
            raise AnnotationFormatError(str(path), reader.line_num, f"CSV syntax error: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise AnnotationFormatError(str(path), None, f"not UTF-8 text: {exc}") from exc

    if not records:
        raise EmptyCatalogError(f"{path}: the CSV has a header but no rows")
    logger.info("read %d rows from %s", len(records), path)
    return records


#: Columns written by :func:`write_csv_catalog`, in order; :func:`read_csv_catalog` reads them back.
CSV_COLUMNS = ("path", "category", "split", "item_id", "attributes", "bbox")


def write_csv_catalog(records: Sequence[CatalogRecord], csv_path: str | os.PathLike[str]) -> Path:
    """Write records as a CSV that :func:`read_csv_catalog` reads back to the same records.

    Columns are :data:`CSV_COLUMNS` (without ``category`` when no record has one); attributes are joined with ``|`` and the box is written as
    ``x1 y1 x2 y2``. Paths are written as they are in the records. The file is written under a
    temporary name and renamed, so a reader never sees half a catalogue.

    Args:
        records: Catalogue records.
        csv_path: Destination file; parent folders are created.

    Returns:
        The written path.

    Raises:
        ValueError: An attribute name contains ``|`` or ``;`` (it could not be read back).
    """
    out = Path(csv_path).expanduser()
    labelled = [record.category is not None for record in records]
    if any(labelled) and not all(labelled):
        missing = records[labelled.index(False)]
        raise DataError(f"{missing.path} has no category while other records have one; a CSV catalogue has "
                        "a category for every row or none")
    columns = CSV_COLUMNS if all(labelled) else tuple(c for c in CSV_COLUMNS if c != "category")
    rows = []
    for number, record in enumerate(records, start=1):
        bad = [a for a in record.attributes if _ATTRIBUTE_SEPARATORS.search(a)]
        if bad:
            raise DataError(f"record {number} ({record.path}): attribute {bad[0]!r} contains '|' or ';'")
        rows.append(
            [
                record.path,
                *([record.category] if "category" in columns else []),
                record.split or "",
                record.item_id or "",
                "|".join(record.attributes),
                " ".join(str(v) for v in record.bbox) if record.bbox is not None else "",
            ]
        )
    with atomic_path(out) as tmp, tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    logger.info("wrote %d records to %s", len(rows), out)
    return out


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _parse_row(
    row: dict[str | None, str | None],
    path: Path,
    line: int,
    base: Path,
    path_column: str,
    category_column: str | None,
    optional: dict[str, str | None],
) -> CatalogRecord:
    def cell(column: str | None) -> str:
        return (row.get(column) or "").strip() if column is not None else ""

    image = cell(path_column)
    if not image:
        raise AnnotationFormatError(str(path), line, f"empty {path_column!r}")
    category = cell(category_column) if category_column is not None else None
    if category == "":
        raise AnnotationFormatError(str(path), line, f"empty {category_column!r} for image {image!r}")
    if _URI.match(image):
        image_path = image  # object storage (s3://, gs://, hdfs://...): opened by pyarrow, kept as written
    else:
        image_path = Path(image).expanduser()
        if not image_path.is_absolute():
            image_path = base / image_path

    split: str | None = cell(optional["split"]).lower() or None
    if split is not None:
        split = _SPLIT_ALIASES.get(split, split)
        if split not in SPLITS:
            raise AnnotationFormatError(
                str(path), line, f"unknown split {split!r} in column {optional['split']!r}; expected one of {SPLITS}"
            )
    attributes = tuple(a.strip() for a in _ATTRIBUTE_SEPARATORS.split(cell(optional["attributes"])) if a.strip())
    return CatalogRecord(
        path=image_path if isinstance(image_path, str) else os.path.normpath(image_path),
        category=category,
        split=split,
        item_id=cell(optional["item_id"]) or None,
        attributes=attributes,
        bbox=_parse_bbox(cell(optional["bbox"]), path, line),
    )


def _parse_bbox(text: str, path: Path, line: int) -> tuple[int, int, int, int] | None:
    if not text:
        return None
    parts = [p for p in _BBOX_SEPARATORS.split(text) if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise AnnotationFormatError(str(path), line, f"bbox {text!r} is not four integers x1 y1 x2 y2")
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1 or min(values) < 0:
        raise AnnotationFormatError(str(path), line, f"bbox {text!r} needs 0 <= x1 <= x2 and 0 <= y1 <= y2")
    return (x1, y1, x2, y2)


class CsvReader:
    """The ``csv`` format: one row per image (see :func:`read_csv_catalog` for the columns)."""

    description = "a .csv file with a path column (category, split, item_id, attributes, bbox optional)"
    detect_priority = 50

    def detect(self, source: str) -> bool:
        path = Path(source).expanduser()
        return path.is_file() and path.suffix.lower() == ".csv"

    def read(self, source: str, **options: object) -> list[CatalogRecord]:
        return read_csv_catalog(source, **options)  # type: ignore[arg-type]
