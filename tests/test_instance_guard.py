"""The instance guard of `clothsim evaluate`: altered copies of gallery photos must find their original."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clothsim.data import read_folder_catalog
from clothsim.data.records import CatalogRecord
from clothsim.encoders import create_encoder
from clothsim.evaluation.instance import (
    INSTANCE_SPLIT,
    alter,
    copies_folder,
    instance_recall,
    make_altered_copies,
)
from clothsim.features import FeatureStore, extract_features

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"


def test_an_altered_copy_is_a_seeded_crop_jitter_and_jpeg_of_the_original():
    photo = next((SAMPLE / "train" / "dress").glob("*.jpg"))
    with Image.open(photo) as opened:
        original = opened.convert("RGB")
    first, again = alter(original, random.Random(3)), alter(original, random.Random(3))
    assert np.array_equal(np.asarray(first), np.asarray(again))  # seeded
    other = alter(original, random.Random(4))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    for copy in (first, other):
        kept = copy.size[0] * copy.size[1] / (original.size[0] * original.size[1])
        assert 0.8 - 0.02 <= kept <= 1.0 and copy.mode == "RGB"
    if first.size == original.size:  # a full-size crop still differs: jitter and JPEG
        assert not np.array_equal(np.asarray(first), np.asarray(original))


def test_recall_at_1_counts_originals_found_first():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 16)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    paths = [f"g{i}.jpg" for i in range(50)]
    near = gallery + 0.01 * rng.normal(size=gallery.shape).astype(np.float32)
    assert instance_recall(near, paths, gallery, paths).recall_at_1 == 1.0
    # Copies pointing at other originals (a swapped half) are misses: the metric can fail.
    swapped = paths[25:] + paths[:25]
    assert instance_recall(near, swapped, gallery, paths).recall_at_1 == 0.0
    # An encoder that collapses garments of one category onto one vector cannot tell copies apart.
    collapsed = np.repeat(gallery[:5], 10, axis=0)
    result = instance_recall(collapsed, paths, collapsed, paths)
    assert result.recall_at_1 == pytest.approx(5 / 50) and result.n_queries == 50
    # Copies whose original is not in the gallery (it failed to encode) are not counted.
    assert instance_recall(near[:3], ["missing.jpg", "g1.jpg", "g2.jpg"], gallery, paths).n_queries == 2
    assert instance_recall(near[:1], ["missing.jpg"], gallery, paths) is None  # nothing to count: no NaN


def test_copies_are_written_once_sampled_and_skip_unreadable_originals(tmp_path, caplog):
    gallery = read_folder_catalog(SAMPLE / "train")[:12]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    gallery.append(CatalogRecord(str(broken), "dress"))
    folder = copies_folder(tmp_path / "cache", gallery, None, 0)
    with caplog.at_level(logging.WARNING, logger="clothsim.evaluation.instance"):
        copies = make_altered_copies(gallery, folder, seed=0)
    assert len(copies) == 12 and "broken.jpg" in caplog.text
    assert [c.item_id for c in copies] == [r.path for r in gallery[:12]]
    assert {c.split for c in copies} == {INSTANCE_SPLIT}
    written = {c.path: Path(c.path).stat().st_mtime_ns for c in copies}
    assert make_altered_copies(gallery, folder, seed=0) == copies  # reused, not written again
    assert {c.path: Path(c.path).stat().st_mtime_ns for c in copies} == written
    Path(copies[3].path).unlink()  # an incomplete folder is written again
    assert Path(make_altered_copies(gallery, folder, seed=0)[3].path).is_file()
    sampled = make_altered_copies(gallery, copies_folder(tmp_path / "cache", gallery, 5, 1), limit=5, seed=1)
    assert len(sampled) == 5 and copies_folder(tmp_path / "cache", gallery, 5, 1) != folder


def test_the_default_encoder_finds_the_originals_of_real_photos(tmp_path):
    root = tmp_path / "gallery"
    for category in ("dress", "shoes", "t-shirt"):
        (root / category).mkdir(parents=True)
        for photo in sorted((SAMPLE / "train" / category).glob("*.jpg"))[:10]:
            shutil.copy(photo, root / category / photo.name)
    gallery = read_folder_catalog(root)
    copies = make_altered_copies(gallery, tmp_path / "copies", seed=0)
    encoder = create_encoder("efficientnet_lite0")
    extract_features(gallery, encoder, tmp_path / "g", num_workers=0, progress=False)
    extract_features(copies, encoder, tmp_path / "c", num_workers=0, progress=False)
    g_vec, g_items = FeatureStore.open(tmp_path / "g").load_vectors()
    c_vec, c_items = FeatureStore.open(tmp_path / "c").load_vectors()
    result = instance_recall(c_vec, [i.record.item_id for i in c_items], g_vec, [i.record.path for i in g_items])
    # Measured 1.000 on these 30 photos; chance is 1/30.
    assert result.n_queries == 30 and result.recall_at_1 >= 0.9


def test_the_cli_default_is_the_librarys():
    import inspect

    from clothsim.cli import cmd_evaluate
    from clothsim.defaults import DEFAULT_INSTANCE_QUERIES
    from clothsim.evaluation.runner import compare_encoders

    # Both read clothsim.defaults, which imports nothing, so `clothsim --help` imports no evaluation code.
    assert cmd_evaluate.DEFAULT_INSTANCE_QUERIES == DEFAULT_INSTANCE_QUERIES
    assert inspect.signature(compare_encoders).parameters["instance_queries"].default == DEFAULT_INSTANCE_QUERIES
