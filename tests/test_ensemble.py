"""Tests of clothsim.ensemble: maths against naive numpy, the saved model, the encoder, no test leak."""

from __future__ import annotations

import json
from pathlib import Path

import _tiny_encoders  # noqa: F401  (registers test-thumb8 / test-thumb4)
import numpy as np
import pytest

from clothsim.data.records import CatalogRecord
from clothsim.encoders.registry import create_encoder
from clothsim.ensemble import (
    EnsembleModel,
    EnsembleTransform,
    PartSpec,
    build_store_from_parts,
    combine,
    fit_ensemble,
    fit_from_catalog,
    select_columns,
    weight_grid,
)
from clothsim.errors import StaleStoreError, UnknownEncoderError
from clothsim.evaluation.split_stores import extract_split, split_store_dir
from clothsim.features import FeatureStore, extract_features


def naive_f_values(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One-way ANOVA F per column, by the textbook formula."""
    groups = sorted(set(y.tolist()))
    n, k = len(y), len(groups)
    grand = x.mean(axis=0)
    between = sum((y == g).sum() * (x[y == g].mean(axis=0) - grand) ** 2 for g in groups) / (k - 1)
    within = sum(((x[y == g] - x[y == g].mean(axis=0)) ** 2).sum(axis=0) for g in groups) / (n - k)
    return between / within


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_select_columns_picks_the_top_k_anova_columns():
    rng = np.random.default_rng(0)
    y = np.repeat(np.array(["a", "b", "c"]), 20)
    x = rng.normal(size=(60, 30))
    x[:, [3, 17, 25]] += np.repeat(np.array([[0.0], [2.0], [4.0]]), 20, axis=0)  # clearly informative
    chosen = select_columns(x, y, 7)
    expected = np.sort(np.argsort(naive_f_values(x, y))[-7:])
    np.testing.assert_array_equal(chosen, expected)
    assert {3, 17, 25} <= set(chosen.tolist())


def test_select_columns_rejects_bad_k_and_single_category():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="k must be between 1 and 3"):
        select_columns(x, ["a", "a", "b", "b"], 4)
    with pytest.raises(ValueError, match="two categories"):
        select_columns(np.random.default_rng(0).normal(size=(4, 3)), ["a"] * 4, 2)


def test_combine_average_and_concat_match_naive_formulas():
    rng = np.random.default_rng(1)
    p1, p2 = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    w = (0.3, 0.9)  # rescaled to 0.25 / 0.75
    average = combine([p1, p2], w, "average")
    np.testing.assert_allclose(average, unit(0.25 * unit(p1) + 0.75 * unit(p2)), rtol=1e-5, atol=1e-6)
    concat = combine([p1, p2[:, :3]], w, "concat")
    reference = unit(np.hstack([np.sqrt(0.25) * unit(p1), np.sqrt(0.75) * unit(p2[:, :3])]))
    np.testing.assert_allclose(concat, reference, rtol=1e-5, atol=1e-6)
    # Cosine of two concatenated rows is the weighted mean of the parts' cosines.
    cos = concat[0] @ concat[1]
    parts_cos = 0.25 * unit(p1)[0] @ unit(p1)[1] + 0.75 * unit(p2[:, :3])[0] @ unit(p2[:, :3])[1]
    assert cos == pytest.approx(parts_cos, abs=1e-5)


def test_combine_rejects_bad_input():
    a = np.ones((2, 3))
    with pytest.raises(ValueError, match="one size"):
        combine([a, np.ones((2, 4))], (1, 1), "average")
    with pytest.raises(ValueError, match="non-negative"):
        combine([a, a], (1, -1))
    with pytest.raises(ValueError, match="method"):
        combine([a, a], (1, 1), "max")


def test_weight_grid_covers_the_simplex_uniform_first():
    grid = weight_grid(3, 0.25)
    assert len(grid) == 15  # compositions of 4 into 3 parts
    assert all(sum(g) == pytest.approx(1) for g in grid)
    assert len(set(grid)) == 15
    assert weight_grid(2, 0.5)[0] == (0.5, 0.5)
    with pytest.raises(ValueError, match="whole steps"):
        weight_grid(2, 0.3)


def _specs(d1: int = 12, d2: int = 6) -> tuple[PartSpec, PartSpec]:
    return (PartSpec("p1", None, {"encoder": "p1", "weights": "w1", "dim": d1, "preprocessing": None}),
            PartSpec("p2", "/x/p2.pth", {"encoder": "p2", "weights": "w2", "dim": d2, "preprocessing": None}))


def _fit_data(seed: int = 0, n_per: int = 10):
    rng = np.random.default_rng(seed)
    records, labels = [], []
    for split, count in (("train", n_per), ("validation", 4)):
        for c in ("a", "b", "c"):
            for i in range(count):
                records.append(CatalogRecord(f"/img/{split}/{c}{i}.png", c, split=split))
                labels.append("abc".index(c))
    labels = np.array(labels, dtype=float)[:, None]
    v1 = rng.normal(size=(len(records), 12)) + labels * np.eye(12)[2]
    v2 = rng.normal(size=(len(records), 6)) + labels * np.eye(6)[4] * 0.5
    return records, [unit(v1).astype(np.float32), unit(v2).astype(np.float32)]


def test_fit_selects_on_train_only_and_combines_like_the_reference():
    records, (v1, v2) = _fit_data()
    model = fit_ensemble(_specs(), records, [v1, v2], weights=(1, 1))
    train = np.array([r.split == "train" for r in records])
    labels = np.array([r.category for r in records])
    expected = np.sort(np.argsort(naive_f_values(v1[train], labels[train]))[-6:])
    np.testing.assert_array_equal(model.columns[0], expected)
    np.testing.assert_array_equal(model.columns[1], np.arange(6))  # the smallest part keeps every column
    out = model.combine([v1, v2])
    reference = unit(0.5 * unit(v1[:, expected]) + 0.5 * unit(v2))
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)
    assert model.dim == 6 and model.info["weights_chosen_by"] == "given"


def test_fit_searches_weights_on_validation():
    records, vectors = _fit_data()
    model = fit_ensemble(_specs(), records, vectors, grid_step=0.25)
    table = model.info["search"]
    assert len(table) == 5
    best = max(row["precision"] for row in table)
    # Ties go to the first grid point reaching the best precision.
    first_best = next(row["weights"] for row in table if row["precision"] == best)
    assert list(model.weights) == first_best


def test_fit_refuses_test_records():
    records, vectors = _fit_data()
    records[3] = CatalogRecord("/img/test/leak.png", "a", split="test")
    with pytest.raises(ValueError, match=r"records\[3\].*leak.png.*'test'"):
        fit_ensemble(_specs(), records, vectors)


def test_save_load_round_trip_gives_identical_vectors(tmp_path: Path):
    records, vectors = _fit_data()
    model = fit_ensemble(_specs(), records, vectors, grid_step=0.5)
    model.save(tmp_path / "ens")
    loaded = EnsembleModel.load(tmp_path / "ens")
    assert loaded.fit_sha256() == model.fit_sha256()
    assert loaded.weights == model.weights and loaded.parts == model.parts
    np.testing.assert_array_equal(loaded.combine(vectors), model.combine(vectors))


def test_load_detects_edited_columns(tmp_path: Path):
    records, vectors = _fit_data()
    fit_ensemble(_specs(), records, vectors, weights=(1, 1)).save(tmp_path)
    cols = np.load(tmp_path / "part-0-columns.npy")
    cols[0] = 11 if cols[0] != 11 else 10
    np.save(tmp_path / "part-0-columns.npy", np.sort(cols))
    with pytest.raises(ValueError, match="fit_sha256"):
        EnsembleModel.load(tmp_path)


# ----- with real (tiny) encoders and images -----------------------------------------------------
@pytest.fixture()
def split_catalog(colour_catalog: list[CatalogRecord]) -> list[CatalogRecord]:
    """The colour catalogue with train (4 per colour), validation (2) and test (2) splits."""
    splits = ["train"] * 4 + ["validation"] * 2 + ["test"] * 2
    return [CatalogRecord(r.path, r.category, split=splits[i % 8]) for i, r in enumerate(colour_catalog)]


def _fit_dir(records, cache: Path, out: Path) -> EnsembleModel:
    model = fit_from_catalog(records, ["test-thumb8", "test-thumb4"], cache, num_workers=0, progress=False,
                             grid_step=0.25)
    model.save(out)
    return model


def test_test_split_does_not_leak_into_the_fit(split_catalog, tmp_path: Path):
    first = _fit_dir(split_catalog, tmp_path / "cache1", tmp_path / "ens1")
    # Same train/validation images; test images swapped for others with scrambled labels.
    other = [r for r in split_catalog if r.split != "test"]
    other += [CatalogRecord(r.path, "green" if r.category != "green" else "red", split="test")
              for r in split_catalog if r.split == "train"][:5]
    second = _fit_dir(other, tmp_path / "cache2", tmp_path / "ens2")
    assert first.fit_sha256() == second.fit_sha256()
    for name in ("part-0-columns.npy", "part-1-columns.npy"):
        assert (tmp_path / "ens1" / name).read_bytes() == (tmp_path / "ens2" / name).read_bytes()
    meta1, meta2 = (json.loads((tmp_path / d / "ensemble.json").read_text()) for d in ("ens1", "ens2"))
    assert meta1["weights"] == meta2["weights"] and meta1["info"] == meta2["info"]
    assert not (tmp_path / "cache1" / "test-thumb8" / "test").exists()  # test images were never encoded


def test_ensemble_encoder_through_extract_features(split_catalog, tmp_path: Path):
    model = _fit_dir(split_catalog, tmp_path / "cache", tmp_path / "ens")
    encoder = create_encoder(f"ensemble:{tmp_path / 'ens'}")
    assert encoder.dim == model.dim == 48
    assert isinstance(encoder.transform, EnsembleTransform)
    fp = encoder.fingerprint()
    assert fp["fit_sha256"] == model.fit_sha256() and [p["encoder"] for p in fp["parts"]] == ["test-thumb8",
                                                                                                "test-thumb4"]
    tests = [r for r in split_catalog if r.split == "test"]
    report = extract_features(tests, encoder, tmp_path / "direct", num_workers=1, progress=False)
    assert report.n_encoded == len(tests)
    direct, items = FeatureStore.open(tmp_path / "direct").load_vectors()
    # Same vectors as running each part on its own and combining with the model.
    parts = [create_encoder(n) for n in ("test-thumb8", "test-thumb4")]
    from PIL import Image

    images = [Image.open(it.record.path).convert("RGB") for it in items]
    np.testing.assert_allclose(direct, model.combine([p.encode_images(images) for p in parts]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(direct, axis=1), 1, atol=1e-5)

    # The store built from the parts' cached stores is the one extract_features would reuse.
    for part in parts:
        extract_split(split_catalog, "test", part, tmp_path / "cache", num_workers=0, progress=False)
    built = build_store_from_parts(encoder, tests, [split_store_dir(tmp_path / "cache", p.name, "test") for p in parts],
                                   tmp_path / "from_parts")
    np.testing.assert_allclose(built.load_vectors()[0], direct, atol=1e-6)
    again = extract_features(tests, encoder, tmp_path / "from_parts", progress=False)
    assert again.reused


def test_refit_with_other_weights_makes_old_stores_stale(split_catalog, tmp_path: Path):
    _fit_dir(split_catalog, tmp_path / "cache", tmp_path / "ens")
    encoder = create_encoder(f"ensemble:{tmp_path / 'ens'}")
    tests = [r for r in split_catalog if r.split == "test"]
    extract_features(tests, encoder, tmp_path / "store", num_workers=0, progress=False)
    fit_from_catalog(split_catalog, ["test-thumb8", "test-thumb4"], tmp_path / "cache", mix=(0.9, 0.1),
                     num_workers=0, progress=False).save(tmp_path / "ens")
    refitted = create_encoder(f"ensemble:{tmp_path / 'ens'}")
    assert refitted.fingerprint()["weights"] != encoder.fingerprint()["weights"]
    with pytest.raises(StaleStoreError):
        FeatureStore.open(tmp_path / "store", expect=refitted.fingerprint())


def test_parts_must_match_the_fitted_fingerprints(tmp_path: Path):
    parts = (PartSpec("test-thumb8", None, {"encoder": "test-thumb8", "weights": "other", "dim": 12,
                                            "preprocessing": None}),
             PartSpec("test-thumb4", None, create_encoder("test-thumb4").fingerprint()))
    EnsembleModel(parts, (np.arange(6), np.arange(6)), (0.5, 0.5)).save(tmp_path)
    with pytest.raises(StaleStoreError, match="test-thumb8 was fitted with another setup"):
        create_encoder(f"ensemble:{tmp_path}")


def test_unknown_ensemble_folder_explains_how_to_fit(tmp_path: Path):
    import clothsim.ensemble  # noqa: F401

    with pytest.raises(UnknownEncoderError, match="clothsim fit-ensemble"):
        create_encoder(f"ensemble:{tmp_path / 'missing'}")


def test_label_tells_fits_with_other_weights_or_methods_apart():
    parts = (PartSpec("a", None, {"encoder": "a", "dim": 4}), PartSpec("b", None, {"encoder": "b", "dim": 4}))
    cols = (np.arange(3), np.arange(3))
    labels = {EnsembleModel(parts, cols, (0.5, 0.5)).label, EnsembleModel(parts, cols, (0.0, 1.0)).label,
              EnsembleModel(parts, cols, (0.5, 0.5), method="concat").label}
    assert labels == {"ensemble:a+b (weights 0.5/0.5)", "ensemble:a+b (weights 0/1)",
                      "ensemble:a+b (concat, weights 0.5/0.5)"}


def test_flip_over_an_ensemble_mirrors_every_part(split_catalog, tmp_path: Path):
    from PIL import Image, ImageOps

    _fit_dir(split_catalog, tmp_path / "cache", tmp_path / "ens")
    flip = create_encoder(f"flip:ensemble:{tmp_path / 'ens'}")
    plain = create_encoder(f"ensemble:{tmp_path / 'ens'}")
    assert flip.fingerprint()["fit_sha256"] == plain.fingerprint()["fit_sha256"]  # the inner identity kept
    assert flip.fingerprint()["encoder"] != plain.fingerprint()["encoder"]
    # With flip a photo and its mirror image are one vector, and that vector is the normalised sum of
    # the plain ensemble's two.
    images = [Image.open(r.path).convert("RGB") for r in split_catalog if r.split == "test"][:4]
    mirrored = [ImageOps.mirror(img) for img in images]
    # (up to resampling: a resize of a mirror image is the mirror of the resize only to rounding)
    assert np.sum(flip.encode_images(images) * flip.encode_images(mirrored), axis=1).min() > 0.9999
    import torch
    from torch.utils.data import default_collate

    batch = default_collate([plain.transform(img) for img in images])  # a tuple: one tensor per part
    expected = plain.embed(batch) + plain.embed(tuple(torch.flip(part, dims=[3]) for part in batch))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(flip.embed(batch), expected, atol=1e-6)
