from __future__ import annotations

import shutil

import numpy as np
import pytest

from clothsim.data.records import CatalogRecord
from clothsim.errors import EmptyCatalogError, StaleStoreError
from clothsim.features.extract import extract_features
from clothsim.features.store import FeatureStore, UnfinishedStoreError


class Interrupt(RuntimeError):
    pass


def test_extracts_every_image_in_catalogue_order(colour_catalog, tiny_encoder, tmp_path):
    report = extract_features(colour_catalog, tiny_encoder, tmp_path / "s", batch_size=5, checkpoint_every=7,
                              num_workers=0, progress=False)
    assert (report.n_encoded, report.n_failed, report.n_new) == (24, 0, 24)
    vectors, items = FeatureStore.open(tmp_path / "s", expect=tiny_encoder.fingerprint()).load_vectors()
    assert [it.record for it in items] == colour_catalog
    expected = tiny_encoder.encode_images([__import__("PIL.Image").Image.open(r.path) for r in colour_catalog])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_bad_files_are_skipped_counted_and_reported(colour_catalog, tiny_encoder, awkward_images, tmp_path):
    bad = [CatalogRecord(str(awkward_images[n]), "broken") for n in ("truncated", "zero_bytes", "not_an_image")]
    missing = CatalogRecord(str(tmp_path / "missing.jpg"), "broken")
    # The bad files sit together so that one whole batch holds nothing decodable.
    records = colour_catalog[:4] + bad + [missing] + colour_catalog[4:10]
    report = extract_features(records, tiny_encoder, tmp_path / "s", batch_size=4, num_workers=2, progress=False)
    assert report.n_failed == 4
    assert sorted(f["path"] for f in report.failures) == sorted(r.path for r in bad + [missing])
    assert report.n_encoded == 10
    store = FeatureStore.open(tmp_path / "s")
    assert len(store) == 10 and len(store.failures) == 4
    assert "broken" not in {it.record.category for it in store.items()}


def test_interrupted_extraction_resumes_where_it_stopped(colour_catalog, tiny_encoder, tmp_path):
    reference = tmp_path / "ref"
    extract_features(colour_catalog, tiny_encoder, reference, batch_size=4, checkpoint_every=8, num_workers=0,
                     progress=False)

    original_embed = tiny_encoder.embed
    calls = {"n": 0}

    def flaky_embed(batch):
        calls["n"] += 1
        if calls["n"] == 5:  # dies inside the third shard (two batches per shard)
            raise Interrupt("power cut")
        return original_embed(batch)

    tiny_encoder.embed = flaky_embed
    with pytest.raises(Interrupt):
        extract_features(colour_catalog, tiny_encoder, tmp_path / "s", batch_size=4, checkpoint_every=8,
                         num_workers=0, progress=False)
    with pytest.raises(UnfinishedStoreError, match="run the same command again"):
        FeatureStore.open(tmp_path / "s")  # nothing half-visible: readers refuse an unfinished build

    tiny_encoder.embed = original_embed
    report = extract_features(colour_catalog, tiny_encoder, tmp_path / "s", batch_size=4, checkpoint_every=8,
                              num_workers=0, progress=False)
    assert report.resumed_shards == 2 and report.n_new == 8 and report.n_encoded == 24
    got, _ = FeatureStore.open(tmp_path / "s").load_vectors()
    want, _ = FeatureStore.open(reference).load_vectors()
    np.testing.assert_array_equal(got, want)
    assert [it.record for it in FeatureStore.open(tmp_path / "s").items()] == colour_catalog


def test_unfinished_work_for_another_catalogue_is_discarded(colour_catalog, tiny_encoder, tmp_path):
    tiny_encoder_embed = tiny_encoder.embed

    def die(batch):
        raise Interrupt()

    tiny_encoder.embed = die
    with pytest.raises(Interrupt):
        extract_features(colour_catalog, tiny_encoder, tmp_path / "s", num_workers=0, progress=False)
    tiny_encoder.embed = tiny_encoder_embed
    report = extract_features(colour_catalog[:5], tiny_encoder, tmp_path / "s", num_workers=0, progress=False)
    assert report.resumed_shards == 0 and report.n_encoded == 5


def test_complete_store_is_reused_and_other_encoder_refused(colour_catalog, tiny_encoder, tmp_path):
    extract_features(colour_catalog, tiny_encoder, tmp_path / "s", num_workers=0, progress=False)
    calls = tiny_encoder.calls
    report = extract_features(colour_catalog, tiny_encoder, tmp_path / "s", num_workers=0, progress=False)
    assert report.reused and tiny_encoder.calls == calls

    tiny_encoder.weights_id = "other-weights"
    with pytest.raises(StaleStoreError, match="another encoder"):
        extract_features(colour_catalog, tiny_encoder, tmp_path / "s", num_workers=0, progress=False)
    report = extract_features(colour_catalog, tiny_encoder, tmp_path / "s", num_workers=0, progress=False,
                              overwrite=True)
    assert not report.reused
    assert FeatureStore.open(tmp_path / "s").fingerprint["weights"] == "other-weights"


def test_empty_catalogue_is_an_error(tiny_encoder, tmp_path):
    with pytest.raises(EmptyCatalogError):
        extract_features([], tiny_encoder, tmp_path / "s")


def test_bbox_crop_is_used(tmp_path, tiny_encoder):
    from PIL import Image

    img = Image.new("RGB", (40, 40), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 40))
    img.save(tmp_path / "two.png")
    records = [CatalogRecord(str(tmp_path / "two.png"), "x", bbox=(20, 0, 40, 40)),
               CatalogRecord(str(tmp_path / "two.png"), "x", bbox=(0, 0, 20, 40))]
    extract_features(records, tiny_encoder, tmp_path / "s", num_workers=0, progress=False)
    vectors, _ = FeatureStore.open(tmp_path / "s").load_vectors()
    blue = tiny_encoder.encode_images([Image.new("RGB", (20, 40), (0, 0, 255))])[0]
    np.testing.assert_allclose(vectors[0], blue, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) < 0.99
    shutil.rmtree(tmp_path / "s")
