"""The frozen lower part of a tuned network, run once per view of each image and cached on disk.

Fine-tuning the whole CNN on a CPU would cost a full forward and backward pass per image per epoch.
The lower layers are frozen, so their output for a given view of an image never changes: each image is
decoded once, cut into ``views`` views (view 0 the encoder's own centre crop, the others randomly
resized crops, flips and mild colour jitter, seeded per image and view) and the lower part's outputs are
kept as float16 arrays. Training then costs only the upper layers. The lower part runs on ONNX Runtime
where it is available (the same outputs as torch, and faster on a CPU; see ``docs/design-notes.md``), else
on torch.

A cache folder is named by a hash of the backbone's fingerprint, the cut, the views, the augmentation,
the seed and the image paths, so nothing stale is ever reused; each split is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clothsim.defaults import DEFAULT_TUNE_JITTER, DEFAULT_TUNE_MIN_SCALE
from clothsim.data.records import CatalogRecord
from clothsim.encoders.base import Encoder, Preprocessing, l2_normalize
from clothsim.errors import DataError, UsageError
from clothsim.fileio import write_json, write_npy
from clothsim.images import ImageDecodeError, load_image

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class AugmentConfig:
    """Light augmentation of the cached views (view 0 is always the plain centre crop).

    Attributes:
        min_scale: Smallest share of the image area a random resized crop keeps.
        flip: Random horizontal flip.
        jitter: Brightness/contrast/saturation jitter strength (hue gets a tenth of it).
    """

    min_scale: float = DEFAULT_TUNE_MIN_SCALE
    flip: bool = True
    jitter: float = DEFAULT_TUNE_JITTER

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_view_transform(pre: Preprocessing, augment: AugmentConfig) -> Callable:
    """The random view transform: PIL image -> normalised ``(3, size, size)`` tensor."""
    from torchvision import transforms

    if not 0.05 <= augment.min_scale <= 1.0:
        raise UsageError(f"min_scale must be between 0.05 and 1, got {augment.min_scale}")
    interpolation = transforms.InterpolationMode(pre.interpolation)
    steps: list[Any] = [transforms.RandomResizedCrop(pre.input_size, scale=(augment.min_scale, 1.0),
                                                     interpolation=interpolation)]
    if augment.flip:
        steps.append(transforms.RandomHorizontalFlip())
    if augment.jitter > 0:
        j = augment.jitter
        steps.append(transforms.ColorJitter(brightness=j, contrast=j, saturation=j, hue=j / 10))
    steps += [transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)]
    return transforms.Compose(steps)


class _ViewDataset(torch.utils.data.Dataset):
    """Image ``i`` -> ``(views, 3, size, size)`` tensor and whether it decoded."""

    def __init__(self, records: Sequence[CatalogRecord], pre: Preprocessing, views: int,
                 augment: AugmentConfig, seed: int) -> None:
        self.records = list(records)
        self.pre = pre
        self.views = views
        self.plain = pre.build_transform()
        self.random = build_view_transform(pre, augment)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool]:
        record = self.records[index]
        size = self.pre.input_size
        try:
            image = load_image(record.path, bbox=record.bbox, min_side=self.pre.resize_size)
        except (ImageDecodeError, OSError) as exc:
            logger.warning("skipping %s: %s", record.path, exc)
            return torch.zeros((self.views, 3, size, size)), False
        out = [self.plain(image)]
        for view in range(1, self.views):
            # Seeded per image and view, so a cache rebuilt anywhere holds the same views.
            torch.manual_seed(hash_seed(self.seed, record.path, view))
            out.append(self.random(image))
        return torch.stack(out), True


def hash_seed(seed: int, path: str, view: int) -> int:
    """A 63-bit seed from the run seed, an image path and a view number (stable across processes)."""
    digest = hashlib.sha256(f"{seed}|{path}|{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class LowerPart(Encoder):
    """The frozen layers below the cut, as an encoder whose vectors are the flattened output map.

    It exists so the ONNX runtime's export (cached, checked against torch) can be reused for the lower
    part; :meth:`run` returns the raw maps, not normalised vectors.
    """

    def __init__(self, backbone: Encoder, lower: nn.Module, cut: int) -> None:
        self.name = f"{backbone.name}-lower{cut}"
        self.weights_id = backbone.weights_id
        self.preprocessing = backbone.preprocessing
        self.lower = lower.eval().requires_grad_(False)
        size = backbone.preprocessing.input_size
        with torch.no_grad():
            self.map_shape = tuple(int(s) for s in self.lower(torch.zeros(1, 3, size, size)).shape[1:])
        self.dim = int(np.prod(self.map_shape))
        self._session: Any = None
        self.runtime_used = "torch"

    def export_module(self) -> nn.Module:
        return nn.Sequential(self.lower, nn.Flatten(1))

    def embed(self, batch: Any) -> np.ndarray:
        return l2_normalize(self.run(batch).reshape(len(batch), -1))

    def use_onnx(self, threads: int | None = None) -> bool:
        """Run through an ONNX Runtime export from now on; ``False`` (staying on torch) if that fails."""
        from clothsim.errors import ClothsimError

        try:
            from clothsim.runtimes.onnx_runtime import _session, exported_model

            path = exported_model(self, self.export_module())
            self._session = _session(path, threads)
        except (ClothsimError, ImportError) as exc:
            logger.info("lower part stays on torch (%s)", exc)
            return False
        self.runtime_used = "onnx"
        return True

    def run(self, batch: Any) -> np.ndarray:
        """``(N, 3, H, W)`` images -> ``(N, *map_shape)`` float32 maps."""
        array = batch.numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch, dtype=np.float32)
        if self._session is not None:
            name = self._session.get_inputs()[0].name
            flat = self._session.run(None, {name: np.ascontiguousarray(array, dtype=np.float32)})[0]
            return flat.reshape((len(array), *self.map_shape))
        with torch.no_grad():
            return self.lower(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))).numpy()


@dataclass
class CachedSplit:
    """The lower outputs of one split: ``maps[i, v]`` is view ``v`` of ``records[i]`` (float16).

    Attributes:
        records: The records that decoded, row for row.
        maps: ``(n, views, C, h, w)`` float16.
        failures: Paths that could not be decoded.
    """

    records: list[CatalogRecord]
    maps: np.ndarray
    failures: list[str] = field(default_factory=list)


def cache_key(part: LowerPart, views: int, augment: AugmentConfig, seed: int,
              records: Sequence[CatalogRecord]) -> str:
    """Hex digest naming a cache: what the cached values depend on."""
    identity = {"format": CACHE_FORMAT, "fingerprint": part.fingerprint(), "views": views,
                "augment": augment.to_dict() if views > 1 else None, "seed": seed if views > 1 else None,
                "records": [(r.path, r.bbox) for r in records]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_split(part: LowerPart, records: Sequence[CatalogRecord], views: int, cache_dir: Path | None,
                augment: AugmentConfig, seed: int, batch_images: int = 8, num_workers: int = 0,
                progress: bool = False, what: str = "") -> CachedSplit:
    """Compute (or read back) the lower outputs of ``views`` views of every record.

    Raises:
        DataError: no image of ``records`` could be decoded.
    """
    if views < 1:
        raise UsageError(f"views must be at least 1, got {views}")
    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir) / cache_key(part, views, augment, seed, records)
        meta_path, maps_path = folder / "split.json", folder / "maps.npy"
        if meta_path.is_file() and maps_path.is_file():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            kept = [CatalogRecord.from_dict(r) for r in meta["records"]]
            logger.info("lower outputs of %s read from %s", what or "split", folder)
            return CachedSplit(kept, np.load(maps_path, mmap_mode="r"), meta["failures"])
    dataset = _ViewDataset(records, part.preprocessing, views, augment, seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_images, num_workers=num_workers)
    chunks, kept_rows = [], []
    done = 0
    from tqdm import tqdm

    with tqdm(total=len(dataset), desc=f"caching {what}".strip(), unit="img", disable=not progress) as bar:
        for images, ok in loader:
            ok = ok.numpy().astype(bool)
            rows = np.flatnonzero(ok)
            if rows.size:
                flat = images[torch.from_numpy(rows)].reshape(-1, *images.shape[2:])
                maps = part.run(flat).astype(np.float16)
                chunks.append(maps.reshape(rows.size, views, *part.map_shape))
                kept_rows.extend((done + rows).tolist())
            done += len(ok)
            bar.update(len(ok))
    if not kept_rows:
        raise DataError(f"none of the {len(records)} {what} images could be decoded")
    kept = [records[i] for i in kept_rows]
    failures = [records[i].path for i in sorted(set(range(len(records))) - set(kept_rows))]
    maps = np.concatenate(chunks)
    if folder is not None:
        write_npy(folder / "maps.npy", maps)
        write_json(folder / "split.json", {"records": [r.to_dict() for r in kept], "failures": failures,
                                           "map_shape": list(part.map_shape), "views": views})
    return CachedSplit(kept, maps, failures)
