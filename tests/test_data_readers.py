"""Tests for clothsim.data.readers (format detection and dispatch); DeepFashion and Fashion-MNIST
dispatch are tested next to their readers."""

from __future__ import annotations

from pathlib import Path

import pytest

import clothsim.data as data
from clothsim.data.readers import default_cache_dir, detect_format, read_catalog


def test_folder_and_csv_dispatch(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "train" / "hat").mkdir(parents=True)
    (tmp_path / "imgs" / "train" / "hat" / "1.jpg").write_bytes(b"")
    (tmp_path / "cat.CSV").write_text("path,category\nimgs/train/hat/1.jpg,cap\n")
    assert detect_format(tmp_path / "imgs") == "folder"
    assert detect_format(tmp_path / "cat.CSV") == "csv"
    assert [(r.category, r.split) for r in read_catalog(tmp_path / "imgs")] == [("hat", "train")]
    from_csv = read_catalog(tmp_path / "cat.CSV")
    assert [(r.category, r.path) for r in from_csv] == [("cap", str(tmp_path / "imgs" / "train" / "hat" / "1.jpg"))]
    # An explicit format wins over detection.
    assert read_catalog(tmp_path / "imgs", format="folder")[0].category == "hat"


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_catalog(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"\.csv"):
        read_catalog(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="unknown catalogue format 'parquet'"):
        read_catalog(tmp_path, format="parquet")
    (tmp_path / "c" / "hat").mkdir(parents=True)
    (tmp_path / "c" / "hat" / "1.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no options"):
        read_catalog(tmp_path / "c", use_coarse=True)


def test_named_sources_and_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert detect_format("fashion-mnist") == "fashion-mnist"
    assert detect_format("demo") == "demo"
    monkeypatch.setenv("CLOTHSIM_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    records = read_catalog("demo")
    assert len(records) == 500
    assert Path(records[0].path).is_relative_to(tmp_path / "cache" / "demo-sample")


def test_package_exports() -> None:
    for name in data.__all__:
        assert getattr(data, name) is not None, name
    with pytest.raises(AttributeError):
        data.no_such_function  # noqa: B018
