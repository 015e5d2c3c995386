"""The bundled clothing photos (the demo's default data) and the script that rebuilds them."""

from __future__ import annotations

import csv
import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from clothsim.data import read_folder_catalog
from clothsim.demo import CLOTHING_SAMPLE_DIR

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ["dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt"]
SIZE_LIMIT_BYTES = 8 * 1024 * 1024  # the most the package's sample may weigh


def load_script():
    spec = importlib.util.spec_from_file_location("make_clothing_sample", REPO / "scripts" / "make_clothing_sample.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_sample_stays_within_the_size_limit():
    total = sum(p.stat().st_size for p in CLOTHING_SAMPLE_DIR.rglob("*") if p.is_file())
    assert 0 < total <= SIZE_LIMIT_BYTES


def test_sample_layout_counts_and_splits():
    records = read_folder_catalog(CLOTHING_SAMPLE_DIR)
    counts = Counter((r.split, r.category) for r in records)
    assert sorted({c for _, c in counts}) == CATEGORIES
    assert all(counts["train", c] == 22 and counts["test", c] == 8 for c in CATEGORIES)
    assert len(records) == 300
    assert {Path(r.path).name for r in records if r.split == "train"}.isdisjoint(
        Path(r.path).name for r in records if r.split == "test")
    assert (CLOTHING_SAMPLE_DIR / "LICENSE.txt").read_text().count("CC0 1.0") >= 1
    assert "make_clothing_sample.py" in (CLOTHING_SAMPLE_DIR / "README.md").read_text()


def test_sample_photos_are_small_clean_jpegs():
    for path in sorted(CLOTHING_SAMPLE_DIR.glob("*/*/*.jpg")):
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB", path
            assert min(img.size) == 256, path
            assert "exif" not in img.info and len(img.getexif()) == 0, path
            assert "icc_profile" not in img.info, path


def test_sources_csv_lists_every_file():
    with open(CLOTHING_SAMPLE_DIR / "sources.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    listed = {(r["split"], r["category"], r["file"]) for r in rows}
    on_disk = {(p.parts[-3], p.parts[-2], p.name) for p in CLOTHING_SAMPLE_DIR.glob("*/*/*.jpg")}
    assert listed == on_disk and len(rows) == 300
    assert all(r["source"] == f"{r['split']}/{r['category']}/{r['file']}" for r in rows)


@pytest.fixture()
def fake_source(tmp_path: Path) -> Path:
    """A clothing-dataset-small lookalike: 2 categories, portrait photos, one stored sideways with EXIF."""
    root = tmp_path / "source"
    for split, n in (("train", 5), ("test", 3), ("validation", 1)):
        for c, category in enumerate(("hat", "skirt")):
            folder = root / split / category
            folder.mkdir(parents=True)
            for i in range(n):
                img = Image.new("RGB", (400, 600), (40 * i, 90 + 50 * c, 200))
                img.paste((250, 250, 250), (20, 20, 120 + 30 * i, 200))
                exif = Image.Exif()
                exif[0x010F] = "camera maker"
                if i == 0:
                    exif[0x0112] = 6  # rotate 90 degrees to view: the output must come out 384x256
                img.save(folder / f"{category}-{i}.jpg", exif=exif, quality=95)
    (root / "train" / "hat" / "notes.txt").write_text("not a photo\n")
    return root


def test_script_rebuilds_the_same_bytes(fake_source, tmp_path):
    script = load_script()
    argv = ["--source", str(fake_source), "--train-per-category", "3", "--test-per-category", "2"]
    assert script.main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert script.main([*argv, "--out", str(tmp_path / "b")]) == 0

    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 * (3 + 2) + 1
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    records = read_folder_catalog(tmp_path / "a")
    assert Counter(r.split for r in records) == {"train": 6, "test": 4}
    for record in records:
        with Image.open(record.path) as img:
            assert min(img.size) == 256 and len(img.getexif()) == 0
            upright = Path(record.path).stem.endswith("-0")
            assert img.size == ((384, 256) if upright else (256, 384))


def test_script_replaces_an_old_sample_but_keeps_the_notes(fake_source, tmp_path):
    script = load_script()
    out = tmp_path / "sample"
    (out / "train" / "old").mkdir(parents=True)
    (out / "train" / "old" / "stale.jpg").write_bytes(b"old")
    (out / "README.md").write_text("hand-written\n")
    assert script.main(["--source", str(fake_source), "--out", str(out), "--train-per-category", "2",
                        "--test-per-category", "1"]) == 0
    assert not (out / "train" / "old").exists()
    assert (out / "README.md").read_text() == "hand-written\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sample-")]  # no temporary folder left


def test_script_refuses_a_missing_source(tmp_path, capsys):
    script = load_script()
    assert script.main(["--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_script_refuses_too_few_photos(fake_source, tmp_path, capsys):
    script = load_script()
    assert script.main(["--source", str(fake_source), "--out", str(tmp_path / "out"),
                        "--train-per-category", "6"]) == 1
    assert "fewer than the 6" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bundled_sample_matches_the_script_when_the_source_is_here(clothing_dataset, tmp_path):
    """Rebuilding from the shared dataset picks the committed files (skipped where it is absent).

    Names and sizes only: the JPEG bytes are the same too with the same Pillow, but may change with it.
    """
    script = load_script()
    assert script.main(["--source", str(clothing_dataset), "--out", str(tmp_path / "rebuilt")]) == 0
    assert (tmp_path / "rebuilt" / "sources.csv").read_text() == (CLOTHING_SAMPLE_DIR / "sources.csv").read_text()
    committed = sorted(p.relative_to(CLOTHING_SAMPLE_DIR) for p in CLOTHING_SAMPLE_DIR.rglob("*.jpg"))
    assert committed == sorted(p.relative_to(tmp_path / "rebuilt") for p in (tmp_path / "rebuilt").rglob("*.jpg"))
