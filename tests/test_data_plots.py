"""Tests for clothsim.data.plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clothsim.data.plots import _SPLIT_COLOURS, count_table, plot_category_distribution
from clothsim.data.records import CatalogRecord
from clothsim.errors import EmptyCatalogError


def records_with_splits() -> list[CatalogRecord]:
    rows = [("dress", "train")] * 5 + [("dress", "test")] * 2 + [("hat", "validation")] * 3 + [("hat", None)]
    rows += [("coat", "train")] * 4
    return [CatalogRecord(path=f"/x/{i}.jpg", category=c, split=s) for i, (c, s) in enumerate(rows)]


def colour_pixels(path: Path, hex_colour: str) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).sum(axis=2) <= 6).sum())


def test_count_table() -> None:
    categories, series = count_table(records_with_splits())
    assert categories == ["dress", "coat", "hat"]  # 7, 4, 4 (ties by name)
    assert series == {"train": [5, 4, 0], "validation": [0, 0, 3], "test": [2, 0, 0], "unset": [0, 0, 1]}
    assert count_table(records_with_splits(), by_split=False)[1] == {"all": [7, 4, 4]}
    no_splits = [CatalogRecord(path="a", category="a"), CatalogRecord(path="b", category="b")]
    assert count_table(no_splits)[1] == {"all": [1, 1]}


def test_plot_writes_png_with_split_colours(tmp_path: Path) -> None:
    out = plot_category_distribution(records_with_splits(), tmp_path / "sub" / "dist.png", title="demo")
    assert out == tmp_path / "sub" / "dist.png"
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.width >= 600 and image.height >= 250
    for split in ("train", "validation", "test", "unset"):
        assert colour_pixels(out, _SPLIT_COLOURS[split]) > 50, split
    assert [p.name for p in out.parent.iterdir()] == ["dist.png"]  # no temporary file left behind


def test_plot_without_split_breakdown_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "dist.png"
    out.write_bytes(b"old")
    plot_category_distribution(records_with_splits(), out, by_split=False)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert colour_pixels(out, _SPLIT_COLOURS["validation"]) == 0
    assert colour_pixels(out, _SPLIT_COLOURS["test"]) == 0


def test_plot_many_categories_grows_taller(tmp_path: Path) -> None:
    few = plot_category_distribution(records_with_splits(), tmp_path / "few.png")
    many_records = [CatalogRecord(path=f"{i}", category=f"category {i % 50:02d}", split="train") for i in range(400)]
    many = plot_category_distribution(many_records, tmp_path / "many.png")
    with Image.open(few) as a, Image.open(many) as b:
        assert b.height > 2 * a.height


def test_plot_empty(tmp_path: Path) -> None:
    with pytest.raises(EmptyCatalogError):
        plot_category_distribution([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
