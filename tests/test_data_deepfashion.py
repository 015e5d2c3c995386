"""Tests for clothsim.data.deepfashion on small files written in the DeepFashion list formats."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from clothsim.data.deepfashion import read_deepfashion_category, read_deepfashion_inshop
from clothsim.data.readers import detect_format, read_catalog
from clothsim.errors import AnnotationFormatError

BLOUSE = "img/Sheer_Pleated-Front_Blouse/img_00000001.jpg"
DRESS = "img/Floral Print Dress/img_00000002.jpg"  # some releases have spaces in names
JEANS_A = "img/Skinny_Jeans/img_00000003.jpg"
JEANS_B = "img/Skinny_Jeans/img_00000004.jpg"


def write_list(path: Path, header: str, rows: list[str], count: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [str(len(rows) if count is None else count), header, *rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_category(root: Path, anno: str = "Anno", images_under: str = "Img") -> Path:
    a = root / anno
    write_list(a / "list_category_cloth.txt", "category_name  category_type", ["Blouse  1", "Jeans   2", "Dress   3"])
    write_list(
        a / "list_category_img.txt",
        "image_name  category_label",
        [f"{BLOUSE}                        1", f"{DRESS}    3", f"{JEANS_A} 2", f"{JEANS_B}\t2"],
    )
    write_list(
        a / "list_attr_cloth.txt",
        "attribute_name  attribute_type",
        ["a-line                       3", "floral print                 1", "long sleeve   2", "denim 4"],
    )
    write_list(
        a / "list_attr_img.txt",
        "image_name  attribute_labels",
        [f"{BLOUSE}   -1  1  1 -1", f"{DRESS} 1 1 -1 0", f"{JEANS_A} -1 -1 -1 1", f"{JEANS_B} 0 0 0 0"],
    )
    write_list(
        a / "list_bbox.txt",
        "image_name  x_1  y_1  x_2  y_2",
        [f"{BLOUSE}  072 079 232 273", f"{DRESS} 1 2 3 4", f"{JEANS_A} 0 0 10 10", f"{JEANS_B} 5 5 5 5"],
    )
    write_list(
        root / "Eval" / "list_eval_partition.txt",
        "image_name  evaluation_status",
        [f"{BLOUSE} train", f"{DRESS} val", f"{JEANS_A} test", f"{JEANS_B} train"],
    )
    (root / images_under / "img").mkdir(parents=True)
    return root


def make_inshop(root: Path) -> Path:
    names = [
        "img/MEN/Denim/id_00000080/01_1_front.jpg",
        "img/MEN/Denim/id_00000080/01_2_side.jpg",
        "img/WOMEN/Denim/id_00000002/02_1_front.jpg",
        "img/WOMEN/Blouses_Shirts/id_00000001/02_1_front.jpg",
    ]
    write_list(
        root / "Eval" / "list_eval_partition.txt",
        "image_name item_id evaluation_status",
        [
            f"{names[0]} id_00000080 train",
            f"{names[1]}  id_00000080  train",
            f"{names[2]} id_00000002 query",
            f"{names[3]} id_00000001 gallery",
        ],
    )
    write_list(
        root / "Anno" / "list_bbox_inshop.txt",
        "image_name  clothes_type  pose_type  x_1  y_1  x_2  y_2",
        [f"{names[0]}  1  1  050  049  208  235", f"{names[2]} 2 3 0 0 9 9"],
    )
    (root / "Img" / "img").mkdir(parents=True)
    return root


def test_category_reads_every_file(tmp_path: Path) -> None:
    root = make_category(tmp_path / "DeepFashion")
    records = read_deepfashion_category(root)
    assert [r.path for r in records] == [str(root / "Img" / n) for n in (BLOUSE, DRESS, JEANS_A, JEANS_B)]
    assert [r.category for r in records] == ["Blouse", "Dress", "Jeans", "Jeans"]
    assert [r.split for r in records] == ["train", "validation", "test", "train"]
    assert [r.attributes for r in records] == [
        ("floral print", "long sleeve"),
        ("a-line", "floral print"),
        ("denim",),
        (),
    ]
    assert [r.bbox for r in records] == [(72, 79, 232, 273), (1, 2, 3, 4), (0, 0, 10, 10), (5, 5, 5, 5)]
    assert all(r.item_id is None for r in records)


@pytest.mark.parametrize("images_under", ["Img", "."])
def test_category_accepts_root_or_img_folder(tmp_path: Path, images_under: str) -> None:
    root = make_category(tmp_path / "df", images_under=images_under)
    image_base = (root / images_under).resolve()
    given = root / "Img" if images_under == "Img" else root
    records = read_deepfashion_category(given)
    assert records[1].path == str(image_base / "img" / "Floral Print Dress" / "img_00000002.jpg")


def test_category_optional_files_absent(tmp_path: Path) -> None:
    root = make_category(tmp_path)
    for name in ("Anno/list_attr_img.txt", "Anno/list_bbox.txt", "Eval/list_eval_partition.txt"):
        (root / name).unlink()
    records = read_deepfashion_category(root)
    assert [(r.split, r.attributes, r.bbox) for r in records] == [(None, (), None)] * 4


def test_category_partition_missing_some_images_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_category(tmp_path)
    write_list(root / "Eval" / "list_eval_partition.txt", "image_name  evaluation_status", [f"{BLOUSE} test"])
    with caplog.at_level(logging.WARNING, logger="clothsim.data.deepfashion"):
        records = read_deepfashion_category(root)
    assert [r.split for r in records] == ["test", None, None, None]
    assert "3 images have no evaluation_status" in caplog.text


def test_anno_choice(tmp_path: Path) -> None:
    root = make_category(tmp_path)
    coarse = root / "Anno_coarse"
    coarse.mkdir()
    for f in ("list_category_cloth.txt", "list_category_img.txt"):
        (coarse / f).write_text((root / "Anno" / f).read_text())
    replace_line(coarse / "list_category_cloth.txt", 3, "Top  1")
    assert read_deepfashion_category(root)[0].category == "Blouse"  # Anno wins by default
    assert read_deepfashion_category(root, use_coarse=True)[0].category == "Top"
    assert read_deepfashion_category(root, use_coarse=True)[0].attributes == ()
    shutil.rmtree(root / "Anno")
    assert read_deepfashion_category(root)[0].category == "Top"
    with pytest.raises(FileNotFoundError, match="Anno/"):
        read_deepfashion_category(root, use_coarse=False)


@pytest.mark.parametrize(
    ("file", "line", "text", "error_line", "message"),
    [
        ("Anno/list_category_img.txt", 3, f"{BLOUSE} 4", 3, r"outside 1\.\.3"),
        ("Anno/list_category_img.txt", 4, f"{DRESS} 0", 4, r"outside 1\.\.3"),
        ("Anno/list_category_img.txt", 5, f"{JEANS_A} two", 5, "must be an integer"),
        ("Anno/list_category_img.txt", 5, f"{JEANS_A} 2 2", 5, "expected 2 fields"),
        ("Anno/list_category_img.txt", 6, f"{JEANS_B}", 6, "expected 2 fields"),
        ("Anno/list_category_img.txt", 6, f"{JEANS_A} 2", 6, "listed twice"),
        ("Anno/list_category_img.txt", 1, "5", 1, "says 5 entries but the file has 4"),
        ("Anno/list_category_img.txt", 1, "many", 1, "number of entries"),
        ("Anno/list_category_img.txt", 2, "category_label image_name", 2, "header starting with 'image_name'"),
        ("Anno/list_category_cloth.txt", 4, "Jeans lower", 4, "type must be an integer"),
        ("Anno/list_category_cloth.txt", 1, "50", 1, "says 50 entries but the file has 3"),
        ("Anno/list_attr_img.txt", 4, f"{DRESS} 1 1 -1 2", 4, "attribute value 4 is '2'"),
        ("Anno/list_attr_img.txt", 5, f"{JEANS_A} -1 -1 1", 5, "expected 5 fields"),
        ("Anno/list_attr_cloth.txt", 6, "denim", 6, "expected 2 fields"),
        ("Anno/list_bbox.txt", 3, f"{BLOUSE} 1 2 3", 3, "expected 5 fields"),
        ("Anno/list_bbox.txt", 4, f"{DRESS} 9 2 3 4", 4, "x_1 <= x_2"),
        ("Anno/list_bbox.txt", 4, f"{DRESS} 1 2 3 4.5", 4, "x_2|y_2 must be an integer"),
        ("Eval/list_eval_partition.txt", 6, f"{JEANS_B} dev", 6, "train, val or test"),
    ],
)
def test_category_malformed_lines(
    tmp_path: Path, file: str, line: int, text: str, error_line: int, message: str
) -> None:
    root = make_category(tmp_path)
    replace_line(root / file, line, text)
    with pytest.raises(AnnotationFormatError, match=message) as info:
        read_deepfashion_category(root)
    assert info.value.path == str(root / file)
    assert info.value.line == error_line
    assert str(info.value).startswith(f"{root / file}:{error_line}: ")


def test_category_rejects_inshop_partition(tmp_path: Path) -> None:
    root = make_category(tmp_path)
    write_list(
        root / "Eval" / "list_eval_partition.txt", "image_name item_id evaluation_status", [f"{BLOUSE} id_1 train"]
    )
    with pytest.raises(AnnotationFormatError, match="read_deepfashion_inshop"):
        read_deepfashion_category(root)


def test_not_a_deepfashion_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a DeepFashion folder"):
        read_deepfashion_category(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_deepfashion_category(tmp_path / "missing")


def test_inshop_reads_partition_and_boxes(tmp_path: Path) -> None:
    root = make_inshop(tmp_path / "inshop")
    records = read_deepfashion_inshop(root)
    assert [r.category for r in records] == ["MEN/Denim", "MEN/Denim", "WOMEN/Denim", "WOMEN/Blouses_Shirts"]
    assert [r.item_id for r in records] == ["id_00000080", "id_00000080", "id_00000002", "id_00000001"]
    assert [r.split for r in records] == ["train", "train", "query", "gallery"]
    assert [r.bbox for r in records] == [(50, 49, 208, 235), None, (0, 0, 9, 9), None]
    assert records[0].path == str(root / "Img" / "img" / "MEN" / "Denim" / "id_00000080" / "01_1_front.jpg")
    plain = read_deepfashion_inshop(root / "Img", category_level="category")
    assert [r.category for r in plain] == ["Denim", "Denim", "Denim", "Blouses_Shirts"]
    assert [r.path for r in plain] == [r.path for r in records]


def test_inshop_without_boxes(tmp_path: Path) -> None:
    root = make_inshop(tmp_path)
    (root / "Anno" / "list_bbox_inshop.txt").unlink()
    assert all(r.bbox is None for r in read_deepfashion_inshop(root))


@pytest.mark.parametrize(
    ("file", "line", "text", "message"),
    [
        ("Eval/list_eval_partition.txt", 3, "img/MEN/Denim/id_00000080/01_1_front.jpg train", "expected 3 fields"),
        (
            "Eval/list_eval_partition.txt",
            4,
            "img/MEN/Denim/id_00000080/01_2_side.jpg id_00000080 val",
            "query or gallery",
        ),
        ("Eval/list_eval_partition.txt", 5, "img/WOMEN/id_00000002/02_1_front.jpg id_00000002 query", "is not img/"),
        ("Eval/list_eval_partition.txt", 1, "3", "says 3 entries but the file has 4"),
        ("Anno/list_bbox_inshop.txt", 4, "img/WOMEN/Denim/id_00000002/02_1_front.jpg x 3 0 0 9 9", "clothes_type"),
        ("Anno/list_bbox_inshop.txt", 4, "img/WOMEN/Denim/id_00000002/02_1_front.jpg 2 3 0 0 9", "expected 7 fields"),
    ],
)
def test_inshop_malformed_lines(tmp_path: Path, file: str, line: int, text: str, message: str) -> None:
    root = make_inshop(tmp_path)
    replace_line(root / file, line, text)
    with pytest.raises(AnnotationFormatError, match=message) as info:
        read_deepfashion_inshop(root)
    assert (info.value.path, info.value.line) == (str(root / file), line)


def test_inshop_unknown_category_level(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="category_level"):
        read_deepfashion_inshop(make_inshop(tmp_path), category_level="gender")


def test_read_catalog_detects_both_benchmarks(tmp_path: Path) -> None:
    category = make_category(tmp_path / "cat")
    inshop = make_inshop(tmp_path / "shop")
    assert detect_format(category) == "deepfashion-category"
    assert detect_format(category / "Img") == "deepfashion-category"
    assert detect_format(inshop) == "deepfashion-inshop"
    (inshop / "Anno" / "list_bbox_inshop.txt").unlink()  # the partition's item_id column still tells
    assert detect_format(inshop / "Img") == "deepfashion-inshop"
    assert read_catalog(inshop, category_level="category")[0].category == "Denim"
    assert read_catalog(category, use_coarse=False)[1].category == "Dress"
