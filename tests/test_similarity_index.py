from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clothsim.data.records import CatalogRecord
from clothsim.errors import StaleStoreError, UsageError
from clothsim.features.store import FeatureStore
from clothsim.similarity_index import SimilarityIndex


def test_search_finds_same_colour_first(catalog, colour_catalog):
    query = colour_catalog[3]  # a red image
    hits = catalog.search(query.path, k=5)
    assert hits[0].record.path == query.path and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.record.category for h in hits[:5]] == ["red"] * 5
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_search_accepts_pil_and_bytes(catalog, colour_catalog):
    path = colour_catalog[10].path
    by_path = catalog.search(path, k=3)
    by_pil = catalog.search(Image.open(path), k=3)
    with open(path, "rb") as fh:
        by_bytes = catalog.search(fh.read(), k=3)
    assert [h.id for h in by_path] == [h.id for h in by_pil] == [h.id for h in by_bytes]


def test_search_by_id_excludes_the_item_and_filters(catalog):
    hits = catalog.search_by_id(0, k=30)
    assert 0 not in [h.id for h in hits] and len(hits) == 23
    blue = catalog.search_by_id(0, k=4, category="blue")
    assert {h.record.category for h in blue} == {"blue"}


def test_open_rebuilds_the_encoder_and_checks_its_fingerprint(catalog, tiny_encoder, tmp_path):
    reopened = SimilarityIndex.open(tmp_path / "index", encoder=tiny_encoder)
    assert len(reopened) == 24 and reopened.categories() == {"blue": 8, "green": 8, "red": 8}
    tiny_encoder.weights_id = "changed"
    with pytest.raises(StaleStoreError):
        SimilarityIndex.open(tmp_path / "index", encoder=tiny_encoder)


def test_add_and_delete(catalog, tmp_path, awkward_images):
    path = tmp_path / "new.png"
    Image.new("RGB", (30, 30), (255, 255, 0)).save(path)
    ids = catalog.add([CatalogRecord(str(path), "yellow"), CatalogRecord(str(awkward_images["truncated"]), "x")])
    assert ids.tolist() == [24]  # the broken file is skipped, and recorded like a failure at build time
    failures = FeatureStore.open(tmp_path / "index").failures
    assert [f["path"] for f in failures] == [str(awkward_images["truncated"])] and failures[0]["reason"]
    assert catalog.search(str(path), k=1)[0].record.category == "yellow"
    assert catalog.delete([24]) == 1
    assert catalog.search(str(path), k=1)[0].record.category != "yellow"
    assert len(catalog) == 24


def test_embed_returns_unit_vectors(catalog, colour_catalog):
    vectors = catalog.embed([r.path for r in colour_catalog[:3]])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_add_crops_exactly_as_the_index_was_built(colour_catalog, tiny_encoder, tmp_path):
    # A photo that is red on the left and blue on the right, boxed around its red half.
    path = tmp_path / "half.png"
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    image.save(path)
    boxed = CatalogRecord(str(path), "boxed", bbox=(0, 0, 20, 20))
    cropped, _ = SimilarityIndex.build(colour_catalog, tmp_path / "crop", encoder=tiny_encoder,
                                       num_workers=0, progress=False)
    plain, _ = SimilarityIndex.build(colour_catalog, tmp_path / "plain", encoder=tiny_encoder,
                                     num_workers=0, progress=False, use_bbox=False)
    [crop_id] = cropped.add([boxed]).tolist()
    [plain_id] = plain.add([boxed]).tolist()
    red = tiny_encoder.encode_images([Image.new("RGB", (20, 20), (255, 0, 0))])[0]
    assert float(cropped.store.vector(crop_id) @ red) == pytest.approx(1.0, abs=1e-4)
    assert float(plain.store.vector(plain_id) @ red) < 0.99  # the whole photo, blue half included


def test_backend_is_recorded_once_and_reopened(catalog, tiny_encoder, tmp_path):
    manifest = FeatureStore.open(tmp_path / "index").manifest
    assert manifest["index_backend"] == "exact" and manifest["index_options"] == {}
    assert manifest["use_bbox"] is True and manifest["runtime"] == "torch"
    assert SimilarityIndex.open(tmp_path / "index", encoder=tiny_encoder).backend.name == "exact"


def test_unknown_backend_fails_before_encoding(colour_catalog, tiny_encoder, tmp_path):
    with pytest.raises(UsageError, match="unknown index backend 'annoy'; known: exact"):
        SimilarityIndex.build(colour_catalog, tmp_path / "x", encoder=tiny_encoder, backend="annoy",
                              num_workers=0, progress=False)
    assert not (tmp_path / "x").exists()


def test_a_ray_cluster_that_is_not_there_is_refused_before_any_work(tmp_path):
    """engine_options={"ray_address": "auto"} with no cluster: a usage error naming clothsim's option,
    raised before int8 calibration or any encoding, and no index folder left behind."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("ray")
    sample = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"
    script = f"""
import json, os
from clothsim import SimilarityIndex, read_catalog
from clothsim.errors import UsageError
records = read_catalog({str(sample / "train")!r})[:8]
try:
    SimilarityIndex.build(records, {str(tmp_path / "idx")!r}, precision="int8", engine="ray",
                          engine_options={{"ray_address": "auto"}}, progress=False)
except UsageError as exc:
    cache = os.environ["CLOTHSIM_CACHE"]
    print(json.dumps({{"error": str(exc), "calibrated": os.path.isdir(os.path.join(cache, "int8"))}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["CLOTHSIM_CACHE"] = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "cannot reach a Ray cluster at 'auto'" in result["error"] and "--ray-address" in result["error"]
    assert "`--address`" not in result["error"]
    assert not result["calibrated"] and not (tmp_path / "idx").exists()


def _recording(monkeypatch, index):
    """Log every photo read and every batch encoded, in order."""
    import clothsim.images as images

    events: list[str] = []
    real_load, real_embed = images.load_image, index.encoder.embed

    def load(*args, **kwargs):
        events.append("load")
        return real_load(*args, **kwargs)

    def embed(batch):
        events.append(f"embed {len(batch)}")
        return real_embed(batch)

    monkeypatch.setattr(images, "load_image", load)
    monkeypatch.setattr(index.encoder, "embed", embed)
    return events


def _loads_before_each_batch(events: list[str]) -> list[int]:
    loads, before = 0, []
    for event in events:
        if event == "load":
            loads += 1
        else:
            before.append(loads)
    return before


def test_embed_decodes_a_bounded_window_ahead_whatever_the_number_of_photos(catalog, colour_catalog, monkeypatch):
    paths = [r.path for r in colour_catalog] * 10  # 240 photos
    expected = np.concatenate([catalog.embed([p]) for p in paths[:24]])
    events = _recording(monkeypatch, catalog)
    vectors = catalog.embed(paths, batch_size=8)
    np.testing.assert_allclose(vectors[:24], expected, atol=1e-6)
    assert vectors.shape == (240, catalog.encoder.dim)
    batches = [e for e in events if e.startswith("embed")]
    assert batches == ["embed 8"] * 30
    # Batch j is encoded before photo 8 * (j + 1) + 8 + 2 is read: memory holds a window, not the list.
    for j, loads in enumerate(_loads_before_each_batch(events)):
        assert loads <= 8 * (j + 1) + 8 + 2, (j, loads)


def test_add_encodes_in_batches_and_commits_every_chunk(catalog, colour_catalog, monkeypatch):
    import clothsim.similarity_index as facade

    monkeypatch.setattr(facade, "ADD_COMMIT_EVERY", 50)
    records = [CatalogRecord(r.path, r.category) for r in colour_catalog] * 5  # 120 photos
    before = len(catalog)
    events = _recording(monkeypatch, catalog)
    commits = []
    real_save = catalog.backend.save
    monkeypatch.setattr(catalog.backend, "save", lambda: (commits.append(len(catalog)), real_save()))
    ids = catalog.add(records)
    assert len(ids) == 120 and len(catalog) == before + 120
    assert commits == [before + 50, before + 100, before + 120]  # one commit per chunk of 50
    assert max(_loads_before_each_batch(events)[j] - 32 * (j + 1) for j in range(3)) <= 32 + 8 * 2
    assert all(int(e.split()[1]) <= 32 for e in events if e.startswith("embed"))
