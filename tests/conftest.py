"""Shared fixtures: paths to the shared data, a tiny deterministic encoder, awkward image files."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clothsim.data.records import CatalogRecord
from clothsim.encoders.base import Encoder, Preprocessing, l2_normalize
from helpers import CLOTHING, VGG16_WEIGHTS, solid_image

# The user cache (exported ONNX models, converted datasets) goes to a folder of this test session, so
# tests neither read a developer's cache nor leave files in it; subprocesses inherit the variable.
_SESSION_CACHE = None
if "CLOTHSIM_CACHE" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="clothsim-test-cache-")
    os.environ["CLOTHSIM_CACHE"] = _SESSION_CACHE
# Model hubs: never reached from a test (offline answers come at once instead of after retries), and the
# hub cache is this session's, so nothing a developer downloaded is used by accident.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", os.path.join(os.environ["CLOTHSIM_CACHE"], "huggingface"))


@pytest.fixture(scope="session", autouse=True)
def _remove_session_cache():
    yield
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)



@pytest.fixture(scope="session")
def clothing_dataset() -> Path:
    if not CLOTHING.is_dir():
        pytest.skip(f"real photos not found at {CLOTHING}")
    return CLOTHING


@pytest.fixture(scope="session")
def vgg16_weights() -> Path:
    if not VGG16_WEIGHTS.is_file():
        pytest.skip(f"VGG16 weights not found at {VGG16_WEIGHTS}")
    return VGG16_WEIGHTS


class TinyColourEncoder(Encoder):
    """A deterministic, weight-free encoder for fast pipeline tests: an 8x8 thumbnail, flattened."""

    name = "tiny-colour"
    dim = 3 * 8 * 8
    weights_id = "none"

    def __init__(self) -> None:
        self.preprocessing = Preprocessing(input_size=8, resize_size=8, mean=(0.5,) * 3, std=(0.25,) * 3)
        self.calls = 0

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        self.calls += 1
        return l2_normalize(np.asarray(batch, dtype=np.float32).reshape(len(batch), -1))


@pytest.fixture()
def tiny_encoder() -> TinyColourEncoder:
    return TinyColourEncoder()


@pytest.fixture()
def catalog(colour_catalog, tiny_encoder, tmp_path):
    """The colour catalogue indexed by the tiny encoder at ``tmp_path / "index"`` (a SimilarityIndex)."""
    from clothsim.similarity_index import SimilarityIndex

    built, _ = SimilarityIndex.build(colour_catalog, tmp_path / "index", encoder=tiny_encoder, num_workers=0,
                                     progress=False)
    return built


@pytest.fixture()
def colour_catalog(tmp_path: Path) -> list[CatalogRecord]:
    """24 small images in 3 colour categories (reds, greens, blues), with shade variations."""
    records = []
    palette = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (20, 40, 210)}
    for category, (r, g, b) in palette.items():
        folder = tmp_path / "catalog" / category
        folder.mkdir(parents=True)
        for i in range(8):
            shade = (min(255, r + 6 * i), min(255, g + 5 * i), min(255, b + 4 * i))
            path = folder / f"{category}_{i}.png"
            solid_image(shade, stripe=20 * i).save(path)
            records.append(CatalogRecord(str(path), category, split="train" if i < 6 else "test"))
    return records


@pytest.fixture(scope="session")
def awkward_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files that real catalogues contain: broken, empty, not images, odd modes, rotated, tiny, huge."""
    root = tmp_path_factory.mktemp("awkward")
    paths: dict[str, Path] = {}

    def path(name: str) -> Path:
        paths[name.split(".")[0]] = root / name
        return root / name

    buf = io.BytesIO()
    solid_image((10, 200, 30), (64, 64)).save(buf, "JPEG")
    path("truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    path("zero_bytes.jpg").write_bytes(b"")
    path("not_an_image.jpg").write_text("this is a text file with a .jpg name\n")
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(path("cmyk.jpg"))
    Image.fromarray(np.full((10, 12), 40000, dtype=np.uint16)).save(path("sixteen_bit.png"))
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(path("palette_alpha.png"), transparency=0)
    # A 40x20 landscape image stored with EXIF orientation 6 (rotate 90 degrees clockwise to view).
    exif = Image.Exif()
    exif[0x0112] = 6
    solid_image((250, 250, 0), (40, 20)).save(path("exif_rotated.jpg"), exif=exif)
    Image.new("RGB", (1, 1), (1, 2, 3)).save(path("one_pixel.png"))
    Image.new("1", (9000, 9000), 0).save(path("huge.png"))  # 81 MP, compresses to a few KB
    return paths


@pytest.fixture()
def opened():
    """Indexes opened by a test, closed after it (a Milvus index closes its connection, and the last one
    on a Milvus Lite file its embedded server)."""
    indexes = []
    yield indexes
    for index in indexes:
        index.close()
