"""Tests for clothsim.data.csv_catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from clothsim.data.csv_catalog import read_csv_catalog, write_csv_catalog
from clothsim.data.records import CatalogRecord
from clothsim.errors import AnnotationFormatError, DataError, EmptyCatalogError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def test_reads_all_columns(tmp_path: Path) -> None:
    csv_path = write(
        tmp_path / "meta" / "cat.csv",
        "path,category,split,item_id,attributes,bbox\n"
        "img/a.jpg,dress,train,id1,floral|long sleeve; v-neck ,1 2 30 40\n"
        f"{tmp_path / 'abs.png'},hat,VAL,,,\n"
        '"img/with, comma.jpg",t-shirt,,id2,,"5,6,7,8"\n',
    )
    records = read_csv_catalog(csv_path)
    assert [r.category for r in records] == ["dress", "hat", "t-shirt"]
    first, second, third = records
    assert first.path == str(tmp_path / "meta" / "img" / "a.jpg")
    assert first.attributes == ("floral", "long sleeve", "v-neck")
    assert first.bbox == (1, 2, 30, 40)
    assert (first.split, first.item_id) == ("train", "id1")
    assert second.path == str(tmp_path / "abs.png")
    assert (second.split, second.item_id, second.attributes, second.bbox) == ("validation", None, (), None)
    assert third.path == str(tmp_path / "meta" / "img" / "with, comma.jpg")
    assert (third.split, third.bbox) == (None, (5, 6, 7, 8))


def test_image_root_and_custom_columns(tmp_path: Path) -> None:
    # A byte-order mark (as Excel writes) must not end up in the first column's name.
    csv_path = write(tmp_path / "c.csv", "\ufefffile,label,extra\nx/1.jpg,coat,zzz\n")
    records = read_csv_catalog(csv_path, path_column="file", category_column="label", image_root=tmp_path / "imgs")
    assert records[0].path == str(tmp_path / "imgs" / "x" / "1.jpg")
    assert records[0].category == "coat"
    assert records[0].split is None


def test_optional_column_can_be_ignored(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "c.csv", "path,category,split\na.jpg,coat,weird-split\n")
    assert read_csv_catalog(csv_path, split_column=None)[0].split is None
    with pytest.raises(AnnotationFormatError, match=r"c\.csv:2: unknown split 'weird-split'"):
        read_csv_catalog(csv_path)


def test_missing_column_names_column_and_file(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "c.csv", "image,category\na.jpg,coat\n")
    with pytest.raises(AnnotationFormatError) as info:
        read_csv_catalog(csv_path)
    assert "'path'" in str(info.value)
    assert info.value.path == str(csv_path)


def test_without_a_category_column_the_images_have_no_category(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "c.csv", "path,label\na.jpg,coat\nb.jpg,hat\n")
    records = read_csv_catalog(csv_path)
    assert [r.category for r in records] == [None, None]
    assert [Path(r.path).name for r in records] == ["a.jpg", "b.jpg"]
    # Written back without a category column, and read back the same.
    again = read_csv_catalog(write_csv_catalog(records, tmp_path / "again.csv"))
    assert again == records
    assert (tmp_path / "again.csv").read_text().splitlines()[0] == "path,split,item_id,attributes,bbox"


def test_a_catalogue_half_labelled_is_not_written_as_csv(tmp_path: Path) -> None:
    records = [CatalogRecord("a.jpg", "coat"), CatalogRecord("b.jpg", None)]
    with pytest.raises(DataError, match="b.jpg has no category"):
        write_csv_catalog(records, tmp_path / "c.csv")


def test_empty_category_names_file_and_line(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "c.csv", "path,category\na.jpg,coat\nb.jpg,  \n")
    with pytest.raises(AnnotationFormatError) as info:
        read_csv_catalog(csv_path)
    assert info.value.line == 3
    assert str(info.value).startswith(f"{csv_path}:3:")
    assert "b.jpg" in str(info.value)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (",coat", "empty 'path'"),
        ("a.jpg,coat,1 2 3", "not four integers"),
        ("a.jpg,coat,10 0 5 4", "x1 <= x2"),
        ("a.jpg,coat,,surplus", "fields but the header has 3"),
    ],
)
def test_malformed_rows(tmp_path: Path, row: str, message: str) -> None:
    csv_path = write(tmp_path / "c.csv", f"path,category,bbox\nok.jpg,hat,\n{row}\n")
    with pytest.raises(AnnotationFormatError, match=message) as info:
        read_csv_catalog(csv_path)
    assert info.value.line == 3


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_csv_catalog(tmp_path / "none.csv")
    with pytest.raises(AnnotationFormatError, match="header"):
        read_csv_catalog(write(tmp_path / "empty.csv", ""))
    with pytest.raises(EmptyCatalogError):
        read_csv_catalog(write(tmp_path / "only_header.csv", "path,category\n"))


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    records = [
        CatalogRecord(
            path=str(tmp_path / "a, b.jpg"),
            category="dress",
            split="train",
            item_id="id1",
            attributes=("floral print", "v-neck"),
            bbox=(1, 2, 3, 4),
        ),
        CatalogRecord(path=str(tmp_path / "c.jpg"), category='say "hi"'),
    ]
    out = write_csv_catalog(records, tmp_path / "out" / "cat.csv")
    assert out == tmp_path / "out" / "cat.csv"
    assert read_csv_catalog(out) == records
    assert [p.name for p in out.parent.iterdir()] == ["cat.csv"]


def test_write_rejects_separator_in_attribute(tmp_path: Path) -> None:
    bad = [CatalogRecord(path="x.jpg", category="c", attributes=("a|b",))]
    with pytest.raises(ValueError, match="'a|b'"):
        write_csv_catalog(bad, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_uri_paths_are_kept_as_written(tmp_path):
    from clothsim.data.csv_catalog import read_csv_catalog

    csv_path = tmp_path / "remote.csv"
    csv_path.write_text("path,category\ns3://shop-photos/dresses/1.jpg,dress\nlocal/2.jpg,hat\n")
    records = read_csv_catalog(csv_path)
    assert records[0].path == "s3://shop-photos/dresses/1.jpg"  # not joined to the CSV's folder
    assert records[1].path == str(tmp_path / "local" / "2.jpg")
