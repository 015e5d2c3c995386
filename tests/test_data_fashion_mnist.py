"""Tests for clothsim.data.fashion_mnist: idx parsing, the Debian files, and the packaged sample."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clothsim.data.fashion_mnist import (
    DEFAULT_FASHION_MNIST_DIR,
    DEMO_SAMPLE_PATH,
    FASHION_MNIST_CLASSES,
    load_demo_sample,
    load_fashion_mnist,
    materialize_demo_sample,
    materialize_fashion_mnist,
    read_idx,
)
from clothsim.data.readers import read_catalog


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_tiny_dataset(folder: Path, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    """Train split of 30 random images (3 per class) and a test split of 10 (1 per class)."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 30), ("t10k", 10)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        for kind, array, ndim in (("images", images, 3), ("labels", labels, 1)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-idx{ndim}-ubyte"
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        if prefix == "train":
            train = (images, labels)
    return train


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    data = idx_bytes(array)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path, ndim=3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"\x00" * 4, "bad idx magic number 0x00000d01"),
        (b"\x01\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x00", "bad idx magic"),
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x08\x01\x00\x00", "truncated idx header"),
        (b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x00\x01", r"needs 3 bytes of data, found 2"),
        (b"\x00\x00\x08\x02" + (1).to_bytes(4, "big") * 2 + b"\x00", "has 2 dimensions, expected 1"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path, ndim=1)
    assert str(path) in str(info.value)


def test_read_idx_damaged_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-12])
    with pytest.raises(ValueError, match="damaged gzip"):
        read_idx(path)


@pytest.mark.parametrize("gz", [True, False])
def test_load_from_folder(tmp_path: Path, gz: bool) -> None:
    images, labels = write_tiny_dataset(tmp_path, gz)
    split = load_fashion_mnist("train", tmp_path)
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, labels)
    assert load_fashion_mnist("test", tmp_path).images.shape == (10, 28, 28)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", tmp_path)


def test_load_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOTHSIM_FASHION_MNIST", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train")
    write_tiny_dataset(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(29, np.uint8)))
    with pytest.raises(ValueError, match="30 images but .* 29 labels"):
        load_fashion_mnist("train")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(30, 10, np.uint8)))
    with pytest.raises(ValueError, match="label 10"):
        load_fashion_mnist("train")


def test_materialize_per_class(tmp_path: Path) -> None:
    images, labels = write_tiny_dataset(tmp_path / "idx", gz=True)
    records = materialize_fashion_mnist(tmp_path / "out", root=tmp_path / "idx", splits=("train",), per_class=2, seed=3)
    assert Counter(r.category for r in records) == {name: 2 for name in FASHION_MNIST_CLASSES}
    assert {r.split for r in records} == {"train"}
    again = materialize_fashion_mnist(tmp_path / "out", root=tmp_path / "idx", splits=("train",), per_class=2, seed=3)
    assert again == records
    for r in records:
        row = int(Path(r.path).stem)
        assert FASHION_MNIST_CLASSES[labels[row]] == r.category
        np.testing.assert_array_equal(np.asarray(Image.open(r.path)), images[row])
    assert "T-shirt/top" in {r.category for r in records}
    assert (tmp_path / "out" / "train" / "t-shirt_top").is_dir()


def test_demo_sample_contents() -> None:
    assert DEMO_SAMPLE_PATH.stat().st_size < 400_000
    images, labels, splits = load_demo_sample()
    assert images.shape == (500, 28, 28) and images.dtype == np.uint8
    assert Counter(zip(splits.tolist(), labels.tolist(), strict=True)) == {
        **{("train", c): 40 for c in range(10)},
        **{("test", c): 10 for c in range(10)},
    }
    assert images.std() > 20  # real garments, not a blank array
    licence = (DEMO_SAMPLE_PATH.parent / "LICENSE.txt").read_text()
    assert "Zalando SE" in licence and "Permission is hereby granted" in licence


def test_materialize_demo_sample_is_idempotent(tmp_path: Path) -> None:
    records = materialize_demo_sample(tmp_path / "demo")
    images, labels, splits = load_demo_sample()
    assert len(records) == 500
    assert [r.split for r in records] == splits.tolist()
    assert [r.category for r in records] == [FASHION_MNIST_CLASSES[i] for i in labels]
    for row in (0, 123, 499):
        path = Path(records[row].path)
        assert path == tmp_path / "demo" / splits[row] / path.parent.name / f"{row:04d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(path)), images[row])
    stamps = {r.path: Path(r.path).stat().st_mtime_ns for r in records}
    Path(records[7].path).write_bytes(b"damaged")
    assert materialize_demo_sample(tmp_path / "demo") == records
    assert np.asarray(Image.open(records[7].path)).shape == (28, 28)
    unchanged = [p for p, t in stamps.items() if Path(p).stat().st_mtime_ns == t]
    assert len(unchanged) == 499
    assert len(list((tmp_path / "demo").rglob("*.png"))) == 500
    assert not list((tmp_path / "demo").rglob("*.tmp"))


def test_read_catalog_demo(tmp_path: Path) -> None:
    records = read_catalog("demo", out_dir=tmp_path)
    assert Counter(r.split for r in records) == {"train": 400, "test": 100}


def test_debian_files() -> None:
    if not (DEFAULT_FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed in {DEFAULT_FASHION_MNIST_DIR} (Debian dataset-fashion-mnist)")
    train = load_fashion_mnist("train", DEFAULT_FASHION_MNIST_DIR)
    test = load_fashion_mnist("test", DEFAULT_FASHION_MNIST_DIR)
    assert train.images.shape == (60000, 28, 28)
    assert test.images.shape == (10000, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    # The packaged sample must be genuine rows of these files with their own labels.
    with np.load(DEMO_SAMPLE_PATH) as sample:
        for split, data in (("train", train), ("test", test)):
            rows = sample["source_index"][sample["splits"] == split]
            np.testing.assert_array_equal(sample["images"][sample["splits"] == split], data.images[rows])
            np.testing.assert_array_equal(sample["labels"][sample["splits"] == split], data.labels[rows])
