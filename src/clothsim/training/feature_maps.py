"""A resumable, atomic cache of un-pooled CNN feature maps (e.g. VGG16 conv5, 512x7x7 at 224).

The Siamese head trains on feature maps that never change, so they are computed once per
(encoder fingerprint, catalogue) and kept on disk as float16 (about 50 KB per VGG16 image). The
cache folder is named by a hash of both, so another encoder, other weights or another catalogue
never reuse a stale cache. Work is cut into shards written atomically; a run started again after an
interruption computes only the missing shards. ``manifest.json`` is written last and marks the cache
complete. Files that cannot be decoded are skipped and listed by path.

Layout of a cache folder::

    manifest.json        fingerprint, catalogue hash, shape, kept row -> record index, failures
    maps.npy             (n_kept, C, H, W) float16 feature maps
    pooled_max.npy       (n_kept, C) float32 global max pooling of the maps (the Siamese input)
    records.jsonl        the kept records, row i for row i
    _work/               shards of an unfinished run
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from clothsim.data.records import CatalogRecord
from clothsim.errors import DataError, EmptyCatalogError, UsageError
from clothsim.engines.local import iter_encoded_shards
from clothsim.features.extract import catalog_hash
from clothsim.fileio import read_jsonl, write_json, write_jsonl, write_npy

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
MANIFEST = "manifest.json"


class FeatureMapEncoder(Protocol):
    """What the cache needs from an encoder: a fingerprint, a transform and ``feature_maps``."""

    name: str

    def fingerprint(self) -> dict[str, Any]: ...

    @property
    def transform(self) -> Any: ...

    def feature_maps(self, batch: Any) -> torch.Tensor: ...


@dataclass
class FeatureMapCache:
    """A complete cache: the kept records and their maps / pooled features, row for row.

    Attributes:
        root: The cache folder.
        records: Records whose image decoded, in catalogue order.
        record_index: For each kept row, its index in the catalogue the cache was built from.
        failures: ``{"path", "reason"}`` for every skipped file.
        manifest: The raw manifest.
    """

    root: Path
    records: list[CatalogRecord]
    record_index: np.ndarray
    failures: list[dict[str, str]]
    manifest: dict[str, Any]

    @property
    def maps(self) -> np.ndarray:
        """``(n, C, H, W)`` float16 feature maps, memory-mapped."""
        return np.load(self.root / "maps.npy", mmap_mode="r")

    @property
    def pooled_max(self) -> np.ndarray:
        """``(n, C)`` float32 global max pooling of :attr:`maps` (computed from the float16 maps)."""
        return np.load(self.root / "pooled_max.npy")

    def __len__(self) -> int:
        return len(self.records)


def cache_key(fingerprint: dict[str, Any], records: Sequence[CatalogRecord], use_bbox: bool = True) -> str:
    """A short digest naming the cache folder for this encoder setup and catalogue."""
    payload = json.dumps({"fingerprint": fingerprint, "catalog": catalog_hash(records), "use_bbox": use_bbox,
                          "format": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_dir_for(cache_root: str | Path, encoder: FeatureMapEncoder, records: Sequence[CatalogRecord],
                  use_bbox: bool = True) -> Path:
    """``<cache_root>/<encoder name>-<key>``: where :func:`build_feature_map_cache` puts this cache."""
    return Path(cache_root) / f"{encoder.name}-{cache_key(encoder.fingerprint(), records, use_bbox)}"


def open_feature_map_cache(root: str | Path) -> FeatureMapCache:
    """Open a complete cache folder.

    Raises:
        FileNotFoundError: ``root`` holds no complete cache (no manifest).
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{root} holds no complete feature-map cache (no {MANIFEST})")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != CACHE_FORMAT:
        raise DataError(f"{path}: cache format {manifest.get('format')} is not {CACHE_FORMAT}; delete it")
    records = [CatalogRecord.from_dict(row) for row in read_jsonl(root / "records.jsonl")]
    return FeatureMapCache(root, records, np.asarray(manifest["record_index"], dtype=np.int64),
                           list(manifest.get("failures", [])), manifest)


def _shard_paths(work: Path, shard: int) -> tuple[Path, Path]:
    base = work / f"shard-{shard:05d}"
    return base.with_suffix(".npy"), base.with_suffix(".json")


def build_feature_map_cache(
    records: Sequence[CatalogRecord],
    encoder: FeatureMapEncoder,
    cache_root: str | Path,
    *,
    batch_size: int = 16,
    num_workers: int = 1,
    shard_size: int = 256,
    use_bbox: bool = True,
    progress: bool = True,
) -> FeatureMapCache:
    """Compute (or reuse, or resume) the feature-map cache of ``records`` under ``cache_root``.

    Args:
        records: The catalogue.
        encoder: An encoder with ``feature_maps`` (e.g. ``create_encoder("vgg16", weights=...)``).
        cache_root: Folder holding caches; this one goes to :func:`cache_dir_for`.
        batch_size: Images per forward pass.
        num_workers: DataLoader processes decoding images.
        shard_size: Images per resumable unit of work.
        use_bbox: Crop to each record's bounding box where it has one.
        progress: Show a progress bar.

    Raises:
        EmptyCatalogError: ``records`` is empty, or no image could be decoded.
    """
    if not records:
        raise EmptyCatalogError("the catalogue has no images to encode")
    if batch_size < 1 or shard_size < 1:
        raise UsageError(f"batch_size and shard_size must be at least 1, got {batch_size}, {shard_size}")
    if not hasattr(encoder, "feature_maps"):
        raise UsageError(f"encoder {encoder.name!r} has no feature_maps(); use a CNN encoder such as vgg16")
    root = cache_dir_for(cache_root, encoder, records, use_bbox)
    if (root / MANIFEST).is_file():
        logger.info("reusing the feature-map cache at %s", root)
        return open_feature_map_cache(root)

    work = root / "_work"
    work.mkdir(parents=True, exist_ok=True)
    n_shards = (len(records) + shard_size - 1) // shard_size
    todo = [s for s in range(n_shards) if not _shard_paths(work, s)[0].is_file()]
    if len(todo) < n_shards:
        logger.info("resuming the feature-map cache: %d of %d shards done", n_shards - len(todo), n_shards)

    def maps_of(batch: Any) -> np.ndarray:
        return encoder.feature_maps(batch).cpu().numpy().astype(np.float16)

    for done in iter_encoded_shards(records, todo, shard_size, encoder.transform, maps_of,
                                    batch_size=batch_size, num_workers=num_workers, use_bbox=use_bbox,
                                    progress=progress, desc=f"feature maps ({encoder.name})"):
        maps_file, meta_file = _shard_paths(work, done.shard)
        write_json(meta_file, {"index": done.indices, "failures": done.failures})
        maps = done.outputs if done.outputs is not None else np.zeros((0, 0, 0, 0), np.float16)
        write_npy(maps_file, maps)  # last: its presence marks the shard done

    index: list[int] = []
    failures: list[dict[str, str]] = []
    parts: list[np.ndarray] = []
    for s in range(n_shards):
        maps_file, meta_file = _shard_paths(work, s)
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        index.extend(meta["index"])
        failures.extend(meta["failures"])
        part = np.load(maps_file)
        if len(part):
            parts.append(part)
    if not parts:
        raise EmptyCatalogError(f"none of the {len(records)} images could be decoded")
    maps = np.concatenate(parts)
    # Max pooling of the stored float16 maps, so training from maps or from pooled rows agrees exactly.
    pooled = maps.reshape(maps.shape[0], maps.shape[1], -1).max(axis=2).astype(np.float32)
    write_npy(root / "maps.npy", maps)
    write_npy(root / "pooled_max.npy", pooled)
    write_jsonl(root / "records.jsonl", (records[i].to_dict() for i in index))
    write_json(root / MANIFEST, {
        "format": CACHE_FORMAT, "fingerprint": encoder.fingerprint(), "catalog_hash": catalog_hash(records),
        "use_bbox": use_bbox, "shape": list(maps.shape), "dtype": "float16", "record_index": index,
        "failures": failures, "n_source_records": len(records),
    })
    shutil.rmtree(work)
    if failures:
        logger.warning("%d of %d images could not be decoded and were skipped", len(failures), len(records))
    return open_feature_map_cache(root)
