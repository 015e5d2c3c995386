"""The catalogue record every reader returns, whatever the source format."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

#: Names used for the ``split`` field. Readers map their format's own names onto these
#: (DeepFashion's ``val`` becomes ``validation``; In-shop keeps ``query`` and ``gallery``).
SPLITS = ("train", "validation", "test", "query", "gallery")


@dataclass(frozen=True)
class CatalogRecord:
    """One catalogue image.

    Attributes:
        path: Absolute or caller-relative path of the image file.
        category: Category label (e.g. ``"dress"``), or ``None`` in a catalogue without categories (a
            flat folder of photos, a CSV without a category column).
        split: ``train``/``validation``/``test``/``query``/``gallery``, or ``None`` when unknown.
        item_id: Identity of the garment (several photos can share one), where the format has it.
        attributes: Names of the attributes that hold for the image, where the format has them.
        bbox: ``(x1, y1, x2, y2)`` pixel box around the garment, where the format has it.
    """

    path: str
    category: str | None = None
    split: str | None = None
    item_id: str | None = None
    attributes: tuple[str, ...] = field(default_factory=tuple)
    bbox: tuple[int, int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        row = asdict(self)
        row["attributes"] = list(self.attributes)
        row["bbox"] = list(self.bbox) if self.bbox is not None else None
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "CatalogRecord":
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        bbox = row.get("bbox")
        return cls(
            path=str(row["path"]),
            category=None if row.get("category") is None else str(row["category"]),
            split=row.get("split"),
            item_id=row.get("item_id"),
            attributes=tuple(row.get("attributes") or ()),
            bbox=tuple(int(v) for v in bbox) if bbox is not None else None,  # type: ignore[arg-type]
        )


def require_categories(records: Sequence[CatalogRecord], needed_by: str) -> None:
    """Refuse a catalogue with images that have no category, for work that needs labels.

    Raises:
        DataError: names how many images lack a category, one of them, and how to give them one.
    """
    from clothsim.errors import DataError

    missing = [r for r in records if r.category is None]
    if missing:
        raise DataError(f"{needed_by} needs a category for every image, and {len(missing)} of {len(records)} have "
                        f"none (e.g. {missing[0].path}); put the photos in one folder per category, or give the "
                        "CSV a category column")
