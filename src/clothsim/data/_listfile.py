"""The DeepFashion list-file layout: line 1 the entry count, line 2 a header, then one entry a line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from clothsim.data.folder import IMAGE_EXTENSIONS
from clothsim.errors import AnnotationFormatError

_IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))


def read_header(path: Path) -> list[str]:
    """The header tokens (line 2) of a list file, lower-cased; empty if the file is shorter."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        handle.readline()
        return handle.readline().lower().split()


def iter_entries(path: Path, header_start: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, stripped text)`` for each entry of a DeepFashion list file.

    Streams the file (``list_attr_img.txt`` is hundreds of megabytes). Blank lines are skipped and
    not counted. After the last entry the count on line 1 is checked, so a consumer sees the count
    error only once it has read everything; readers build their result before returning, so a
    mismatch never yields a partial catalogue.

    Args:
        path: The list file.
        header_start: Expected first word of the header on line 2 (e.g. ``"image_name"``); a
            different word means the wrong file was given.

    Raises:
        AnnotationFormatError: Line 1 is not a count, line 2 is not the expected header, the count
            does not match the entries, or the file is not UTF-8.
    """
    where = str(path)
    with path.open(encoding="utf-8") as handle:
        try:
            first = handle.readline()
            if not first.strip():
                raise AnnotationFormatError(where, 1, "expected the number of entries on line 1, found nothing")
            try:
                count = int(first.strip())
            except ValueError:
                raise AnnotationFormatError(
                    where, 1, f"expected the number of entries on line 1, found {first.strip()!r}"
                ) from None
            if count < 0:
                raise AnnotationFormatError(where, 1, f"negative entry count {count}")
            header = handle.readline().split()
            if not header or header[0].lower() != header_start:
                raise AnnotationFormatError(
                    where, 2, f"expected a header starting with {header_start!r}, found {' '.join(header)!r}"
                )
            seen = 0
            for number, line in enumerate(handle, start=3):
                text = line.strip()
                if text:
                    seen += 1
                    yield number, text
        except UnicodeDecodeError as exc:
            raise AnnotationFormatError(where, None, f"not UTF-8 text: {exc}") from exc
    if seen != count:
        raise AnnotationFormatError(where, 1, f"line 1 says {count} entries but the file has {seen}")


def split_fields(path: Path, number: int, text: str, values: int, what: str, image: bool = True) -> list[str]:
    """Split an entry into a leading name (which may contain spaces) and ``values`` fields.

    Splitting from the right keeps names such as ``img/Floral Print Dress/img_1.jpg`` whole. A line
    with too many fields would then pass its surplus into the name, so image names must end with
    an image extension: ``img/a.jpg 3 4`` is caught as a field-count error.

    Args:
        path: File being read (for messages).
        number: 1-based line number (for messages).
        text: The stripped line.
        values: How many fields follow the name.
        what: Human description of the expected fields, for the message.
        image: Whether the name is an image path that must end with an image extension.

    Raises:
        AnnotationFormatError: The line has the wrong number of fields.
    """
    parts = text.rsplit(None, values)
    if len(parts) != values + 1 or (image and not parts[0].lower().endswith(_IMAGE_SUFFIXES)):
        raise AnnotationFormatError(str(path), number, f"expected {values + 1} fields ({what}): {_clip(text)!r}")
    return parts


def _clip(text: str, limit: int = 120) -> str:
    # list_attr_img lines hold 1000 values; keep messages readable.
    return text if len(text) <= limit else text[:limit] + "..."


def parse_int(path: Path, number: int, token: str, field: str) -> int:
    """``int(token)``, or an :class:`AnnotationFormatError` naming the field, file and line."""
    try:
        return int(token)
    except ValueError:
        raise AnnotationFormatError(str(path), number, f"{field} must be an integer, found {token!r}") from None


def parse_bbox(path: Path, number: int, tokens: list[str]) -> tuple[int, int, int, int]:
    """Four tokens as an ``(x1, y1, x2, y2)`` box with ``0 <= x1 <= x2`` and ``0 <= y1 <= y2``."""
    names = ("x_1", "y_1", "x_2", "y_2")
    x1, y1, x2, y2 = (parse_int(path, number, t, name) for t, name in zip(tokens, names, strict=True))
    if min(x1, y1) < 0 or x2 < x1 or y2 < y1:
        raise AnnotationFormatError(
            str(path), number, f"bounding box ({x1}, {y1}, {x2}, {y2}) needs 0 <= x_1 <= x_2 and 0 <= y_1 <= y_2"
        )
    return (x1, y1, x2, y2)
