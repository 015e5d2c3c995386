"""Tests for clothsim.data.folder."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import pytest

from clothsim.data.folder import read_folder_catalog
from clothsim.errors import EmptyCatalogError


def shared_dir() -> Path:
    return Path(os.environ.get("CLOTHSIM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # the reader goes by name; decoding is the encoders' business
    return path


def test_split_layout_with_aliases_and_mixed_case_extensions(tmp_path: Path) -> None:
    touch(tmp_path / "train" / "dress" / "b.JPG")
    touch(tmp_path / "train" / "dress" / "a.jpeg")
    touch(tmp_path / "train" / "hat" / "x.WebP")
    touch(tmp_path / "VAL" / "hat" / "y.png")
    touch(tmp_path / "test" / "dress" / "nested" / "z.TIFF")
    touch(tmp_path / "train" / "dress" / "notes.txt")
    touch(tmp_path / "train" / "dress" / "._a.jpeg")  # macOS resource fork
    touch(tmp_path / ".hidden" / "dress" / "q.jpg")

    records = read_folder_catalog(tmp_path)

    got = [(r.split, r.category, Path(r.path).relative_to(tmp_path).as_posix()) for r in records]
    assert got == [
        ("train", "dress", "train/dress/a.jpeg"),
        ("train", "dress", "train/dress/b.JPG"),
        ("train", "hat", "train/hat/x.WebP"),
        ("validation", "hat", "VAL/hat/y.png"),
        ("test", "dress", "test/dress/nested/z.TIFF"),
    ]
    assert all(Path(r.path).is_absolute() for r in records)


@pytest.mark.parametrize("name", ["val", "valid", "validation", "Validation"])
def test_validation_folder_names(tmp_path: Path, name: str) -> None:
    touch(tmp_path / name / "coat" / "1.bmp")
    assert [r.split for r in read_folder_catalog(tmp_path)] == ["validation"]


def test_flat_layout_has_no_split_and_relative_root_gives_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    touch(tmp_path / "cat" / "shoes" / "2.gif")
    touch(tmp_path / "cat" / "pants" / "1.jpg")
    monkeypatch.chdir(tmp_path)
    records = read_folder_catalog("cat")
    assert [(r.category, r.split) for r in records] == [("pants", None), ("shoes", None)]
    assert records[0].path == str(tmp_path / "cat" / "pants" / "1.jpg")


def test_order_is_deterministic(tmp_path: Path) -> None:
    for i in (5, 3, 9, 1):
        touch(tmp_path / "b" / f"{i}.jpg")
        touch(tmp_path / "a" / f"{i}.jpg")
    first = read_folder_catalog(tmp_path)
    assert first == read_folder_catalog(tmp_path)
    assert [r.path for r in first] == sorted(r.path for r in first)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        read_folder_catalog(tmp_path / "nope")


def test_no_images(tmp_path: Path) -> None:
    touch(tmp_path / "dress" / "readme.txt")
    with pytest.raises(EmptyCatalogError, match=str(tmp_path)):
        read_folder_catalog(tmp_path)


def test_mixed_split_and_category_folders(tmp_path: Path) -> None:
    touch(tmp_path / "train" / "dress" / "1.jpg")
    touch(tmp_path / "hat" / "2.jpg")
    with pytest.raises(ValueError, match="hat"):
        read_folder_catalog(tmp_path)


def test_two_folders_for_one_split(tmp_path: Path) -> None:
    touch(tmp_path / "val" / "dress" / "1.jpg")
    touch(tmp_path / "validation" / "dress" / "2.jpg")
    with pytest.raises(ValueError, match="validation"):
        read_folder_catalog(tmp_path)


def test_loose_images_beside_category_folders_have_no_category(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    touch(tmp_path / "dress" / "1.jpg")
    touch(tmp_path / "stray.jpg")
    with caplog.at_level(logging.WARNING, logger="clothsim.data.folder"):
        records = read_folder_catalog(tmp_path)
    assert [(Path(r.path).name, r.category) for r in records] == [("stray.jpg", None), ("1.jpg", "dress")]
    assert "1 images are not inside a category folder" in caplog.text and "without a category" in caplog.text


def test_a_flat_folder_is_a_catalogue_without_categories(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("b.jpg", "a.PNG", ".hidden.jpg", "notes.txt"):
        touch(tmp_path / name)
    with caplog.at_level(logging.WARNING, logger="clothsim.data.folder"):
        records = read_folder_catalog(tmp_path)
    assert [(Path(r.path).name, r.category, r.split) for r in records] == [("a.PNG", None, None), ("b.jpg", None, None)]
    assert not caplog.text  # nothing to warn about: a flat folder is a layout of its own


def test_loose_images_beside_split_folders_are_reported_and_skipped(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    touch(tmp_path / "train" / "dress" / "1.jpg")
    touch(tmp_path / "stray.jpg")
    with caplog.at_level(logging.WARNING, logger="clothsim.data.folder"):
        records = read_folder_catalog(tmp_path)
    assert [r.category for r in records] == ["dress"]
    assert "skipped 1 images" in caplog.text


@pytest.mark.real_photos
def test_clothing_dataset_small() -> None:
    root = shared_dir() / "data" / "clothing-dataset-small"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    records = read_folder_catalog(root)
    assert len(records) == 3781
    assert Counter(r.split for r in records) == {"train": 3068, "validation": 341, "test": 372}
    categories = {r.category for r in records}
    assert categories == {
        "dress",
        "hat",
        "longsleeve",
        "outwear",
        "pants",
        "shirt",
        "shoes",
        "shorts",
        "skirt",
        "t-shirt",
    }
    for r in records[:: len(records) // 20]:
        assert Path(r.path).is_file()
        assert Path(r.path).parent.name == r.category
