"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; Zalando SE, MIT licence) and the packaged demo sample.

The idx files are read from ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``) unless another folder is given or ``CLOTHSIM_FASHION_MNIST`` names one.
Images are written out as PNG files so that Fashion-MNIST goes through the same path-based
pipeline as photo catalogues; the files are 28x28 grayscale, and the encoders' transforms resize them
(callers convert to RGB, as they do for any image).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clothsim.data.records import CatalogRecord
from clothsim.errors import DataError, UsageError
from clothsim.fileio import atomic_path

logger = logging.getLogger(__name__)

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Class names in label order (label 0 is ``T-shirt/top``).
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Folder name used for each class when images are written out (``/`` cannot be in a folder name).
FASHION_MNIST_FOLDERS = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08  # idx type code for unsigned bytes, the only one Fashion-MNIST uses

#: The packaged sample (shipped as package data of ``clothsim``; ``assets`` is not a package itself).
DEMO_SAMPLE_PATH = Path(__file__).resolve().parents[1] / "assets" / "fashion_mnist_sample" / "sample.npz"


@dataclass(frozen=True)
class FashionMnistSplit:
    """One split of Fashion-MNIST in memory.

    Attributes:
        images: ``(n, 28, 28)`` uint8 array.
        labels: ``(n,)`` int64 array of class indices into :data:`FASHION_MNIST_CLASSES`.
    """

    images: np.ndarray
    labels: np.ndarray


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Read an idx file of unsigned bytes, gzipped (by its magic bytes) or plain.

    Args:
        path: The idx file.
        ndim: Expected number of dimensions (3 for images, 1 for labels); ``None`` accepts any.

    Returns:
        A uint8 array with the shape given in the file's header.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The magic number, dimensions or length are wrong (the message names the file).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: damaged gzip data: {exc}") from exc
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an idx header ({len(raw)} bytes)")
    zero, dtype, dims = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype != _IDX_UBYTE:
        raise ValueError(
            f"{path}: bad idx magic number 0x{raw[:4].hex()}; expected 0x000008NN (unsigned bytes, NN dimensions)"
        )
    if ndim is not None and dims != ndim:
        raise DataError(f"{path}: idx file has {dims} dimensions, expected {ndim} (magic 0x{raw[:4].hex()})")
    header_end = 4 + 4 * dims
    if len(raw) < header_end:
        raise DataError(f"{path}: truncated idx header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header_end != expected:
        raise DataError(f"{path}: header shape {shape} needs {expected} bytes of data, found {len(raw) - header_end}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_end).reshape(shape).copy()


def fashion_mnist_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder with the idx files: ``root``, else ``$CLOTHSIM_FASHION_MNIST``, else the Debian path."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("CLOTHSIM_FASHION_MNIST", DEFAULT_FASHION_MNIST_DIR))


def load_fashion_mnist(split: str = "train", root: str | os.PathLike[str] | None = None) -> FashionMnistSplit:
    """Load the ``train`` (60,000 images) or ``test`` (10,000 images) split.

    Args:
        split: ``"train"`` or ``"test"``.
        root: Folder with the idx files (``.gz`` or uncompressed); see :func:`fashion_mnist_dir`.

    Raises:
        ValueError: Unknown split, or the files disagree (bad magic, image size or length).
        FileNotFoundError: The idx files are not in the folder.
    """
    if split not in _FILES:
        raise UsageError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    folder = fashion_mnist_dir(root)
    images_file, labels_file = (_find(folder, stem) for stem in _FILES[split])
    images = read_idx(images_file, ndim=3)
    labels = read_idx(labels_file, ndim=1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_file} has {images.shape[0]} images but {labels_file} has {labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_file}: images are {images.shape[1:]}, expected (28, 28)")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels_file}: label {labels.max()} is outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
    return FashionMnistSplit(images=images, labels=labels)


def materialize_fashion_mnist(
    out_dir: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    splits: tuple[str, ...] = ("train", "test"),
    per_class: int | None = None,
    seed: int = 0,
) -> list[CatalogRecord]:
    """Write Fashion-MNIST images as PNG files ``out_dir/<split>/<class folder>/NNNNN.png``.

    ``NNNNN`` is the image's index in its idx file, so files are stable across calls; existing
    files with the same content are left alone.

    Args:
        out_dir: Destination folder.
        root: Folder with the idx files; see :func:`fashion_mnist_dir`.
        splits: Which splits to write (``train`` and/or ``test``).
        per_class: If set, a seeded random choice of this many images per class and split.
        seed: Seed for that choice.

    Returns:
        One record per written image (category = class name, split = ``train``/``test``).
    """
    if per_class is not None and per_class < 1:
        raise UsageError(f"per_class must be at least 1, got {per_class}")
    out = Path(os.path.abspath(Path(out_dir).expanduser()))
    records: list[CatalogRecord] = []
    for split in splits:
        data = load_fashion_mnist(split, root)
        rows = np.arange(data.labels.size)
        if per_class is not None:
            rows = _choose_per_class(data.labels, per_class, np.random.default_rng([seed, _split_number(split)]))
        for row in rows:
            records.append(_write_png(out, split, int(data.labels[row]), data.images[row], f"{row:05d}"))
    logger.info("Fashion-MNIST: %d images under %s", len(records), out)
    return records


def load_demo_sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The packaged Fashion-MNIST sample: ``(images uint8 (n, 28, 28), labels (n,), splits (n,) str)``."""
    with np.load(DEMO_SAMPLE_PATH, allow_pickle=False) as sample:
        return sample["images"], sample["labels"].astype(np.int64), sample["splits"].astype(str)


def materialize_demo_sample(out_dir: str | os.PathLike[str]) -> list[CatalogRecord]:
    """Write the packaged sample as PNG files and return its records.

    The sample has 40 training images per class (the catalogue, split ``train``) and 10 test images
    per class (the queries, split ``test``). Files go to ``out_dir/<split>/<class folder>/NNNN.png``
    where ``NNNN`` is the row in the sample; calling again rewrites nothing that is already right.

    Args:
        out_dir: Destination folder (created if needed).

    Returns:
        One record per image, catalogue first, with absolute paths.
    """
    images, labels, splits = load_demo_sample()
    out = Path(os.path.abspath(Path(out_dir).expanduser()))
    records = [
        _write_png(out, str(splits[row]), int(labels[row]), images[row], f"{row:04d}") for row in range(len(labels))
    ]
    logger.info("demo sample: %d images under %s", len(records), out)
    return records


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{stem}(.gz) not found in {folder}; install the Debian package dataset-fashion-mnist or "
        "pass the folder with the idx files (or set CLOTHSIM_FASHION_MNIST)"
    )


def _split_number(split: str) -> int:
    return sorted(_FILES).index(split)


def _choose_per_class(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    chosen = []
    for label in range(len(FASHION_MNIST_CLASSES)):
        rows = np.flatnonzero(labels == label)
        chosen.append(rng.choice(rows, size=min(per_class, rows.size), replace=False))
    return np.sort(np.concatenate(chosen))


def _write_png(out: Path, split: str, label: int, pixels: np.ndarray, stem: str) -> CatalogRecord:
    path = out / split / FASHION_MNIST_FOLDERS[label] / f"{stem}.png"
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    if not (path.is_file() and path.read_bytes() == data):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return CatalogRecord(path=str(path), category=FASHION_MNIST_CLASSES[label], split=split)


def _is_name(source: str, name: str) -> bool:
    # A folder that happens to be called like the name is read as a folder.
    return source.lower() == name and not Path(source).exists()


class FashionMnistReader:
    """The ``fashion-mnist`` source: Debian's idx files (``dataset-fashion-mnist``) written out as PNG."""

    description = "the name 'fashion-mnist': Debian's Fashion-MNIST idx files, written out as PNG files"
    detect_priority = 100

    def detect(self, source: str) -> bool:
        return _is_name(source, "fashion-mnist")

    def read(self, source: str, **options: object) -> list[CatalogRecord]:
        from clothsim.user_dirs import default_cache_dir

        out_dir = options.pop("out_dir", None) or default_cache_dir() / "fashion-mnist"
        return materialize_fashion_mnist(out_dir, **options)  # type: ignore[arg-type]


class DemoSampleReader:
    """The ``demo`` source: the 500-image Fashion-MNIST sample bundled with clothsim."""

    description = "the name 'demo': the Fashion-MNIST sample bundled with clothsim (500 images)"
    detect_priority = 100

    def detect(self, source: str) -> bool:
        return _is_name(source, "demo")

    def read(self, source: str, **options: object) -> list[CatalogRecord]:
        from clothsim.user_dirs import default_cache_dir

        out_dir = options.pop("out_dir", None) or default_cache_dir() / "demo-sample"
        if options:
            raise UsageError(f"the demo sample takes only out_dir, got {sorted(options)}")
        return materialize_demo_sample(out_dir)  # type: ignore[arg-type]
