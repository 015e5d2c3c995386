"""The feature-map cache: shapes, pooled rows, skipped files, reuse, resume, keying."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clothsim.data.records import CatalogRecord
from clothsim.encoders.base import Preprocessing
from clothsim.encoders.torch_cnn import TorchCNNEncoder
from clothsim.errors import EmptyCatalogError
from clothsim.training.feature_maps import (
    build_feature_map_cache,
    cache_dir_for,
    open_feature_map_cache,
)


class CountingEncoder(TorchCNNEncoder):
    """A tiny random CNN (4 x 4 x 4 maps at 16 px) that counts, and can refuse, forward passes."""

    def __init__(self, seed: int = 0, fail_after: int | None = None) -> None:
        torch.manual_seed(seed)
        trunk = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.ReLU())
        super().__init__("tiny-cnn", 4, Preprocessing(input_size=16, resize_size=16), trunk, f"seed{seed}")
        self.images = 0
        self.fail_after = fail_after

    def feature_maps(self, batch):
        if self.fail_after is not None and self.images >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.images += batch.shape[0]
        return super().feature_maps(batch)


@pytest.fixture()
def records(colour_catalog, awkward_images) -> list[CatalogRecord]:
    broken = CatalogRecord(str(awkward_images["truncated"]), "red", split="train")
    return colour_catalog[:10] + [broken] + colour_catalog[10:]


def test_builds_maps_pooled_rows_and_skips_broken_files(records, tmp_path: Path) -> None:
    encoder = CountingEncoder()
    cache = build_feature_map_cache(records, encoder, tmp_path / "c", batch_size=4, num_workers=0,
                                    shard_size=8, progress=False)
    assert len(cache) == len(records) - 1
    assert [f["path"] for f in cache.failures] == [records[10].path]
    assert cache.maps.shape == (len(records) - 1, 4, 4, 4) and cache.maps.dtype == np.float16
    np.testing.assert_array_equal(cache.pooled_max, cache.maps.astype(np.float32).max(axis=(2, 3)))
    assert [r.path for r in cache.records] == [r.path for i, r in enumerate(records) if i != 10]
    assert cache.record_index.tolist() == [i for i in range(len(records)) if i != 10]
    # Row 3's maps are that image's maps.
    from torch.utils.data import default_collate

    from clothsim.images import load_image
    direct = encoder.feature_maps(default_collate([encoder.transform(load_image(records[3].path))]))
    np.testing.assert_allclose(cache.maps[3].astype(np.float32), direct[0].numpy(), rtol=2e-3, atol=2e-3)


def test_reused_without_recomputing(records, tmp_path: Path) -> None:
    build_feature_map_cache(records, CountingEncoder(), tmp_path, num_workers=0, progress=False)
    again = CountingEncoder(fail_after=0)  # would raise if asked for any maps
    cache = build_feature_map_cache(records, again, tmp_path, num_workers=0, progress=False)
    assert len(cache) == len(records) - 1 and again.images == 0
    assert open_feature_map_cache(cache.root).records == cache.records


def test_resumes_after_an_interruption(records, tmp_path: Path) -> None:
    interrupted = CountingEncoder(fail_after=8)
    with pytest.raises(KeyboardInterrupt):
        build_feature_map_cache(records, interrupted, tmp_path, batch_size=4, num_workers=0, shard_size=8,
                                progress=False)
    resumed = CountingEncoder()
    cache = build_feature_map_cache(records, resumed, tmp_path, batch_size=4, num_workers=0, shard_size=8,
                                    progress=False)
    assert resumed.images == len(records) - 1 - 8  # the first shard was not redone
    full = build_feature_map_cache(records, CountingEncoder(), tmp_path / "fresh", batch_size=4, num_workers=0,
                                   shard_size=8, progress=False)
    np.testing.assert_array_equal(cache.maps, full.maps)


def test_keyed_by_encoder_and_catalogue(records, tmp_path: Path) -> None:
    base = cache_dir_for(tmp_path, CountingEncoder(0), records)
    assert cache_dir_for(tmp_path, CountingEncoder(1), records) != base  # other weights
    assert cache_dir_for(tmp_path, CountingEncoder(0), records[:-1]) != base  # other catalogue
    assert cache_dir_for(tmp_path, CountingEncoder(0), list(records)) == base


def test_errors(tmp_path: Path, awkward_images) -> None:
    with pytest.raises(EmptyCatalogError):
        build_feature_map_cache([], CountingEncoder(), tmp_path, progress=False)
    bad = [CatalogRecord(str(awkward_images["zero_bytes"]), "x")]
    with pytest.raises(EmptyCatalogError, match="could be decoded"):
        build_feature_map_cache(bad, CountingEncoder(), tmp_path, num_workers=0, progress=False)
    with pytest.raises(FileNotFoundError):
        open_feature_map_cache(tmp_path / "nothing")
