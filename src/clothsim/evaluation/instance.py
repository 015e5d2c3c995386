"""The instance guard: does an encoder still tell one garment from another, not only one category from another?

Each sampled gallery photo gets an altered copy (a seeded random crop keeping 80-100% of the picture,
a slight colour jitter, JPEG quality 70: what a re-upload or another shop's copy of the same photo does).
The copy is queried against the gallery and must find its original first: recall@1. An encoder tuned
hard on categories can collapse the garments of one category together; category precision cannot see
that, this can.

The altered copies are written once per (gallery, seed, sample size) under the evaluation cache, so every
encoder of a comparison is scored on the very same images (a paired comparison) and a second run
re-encodes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from clothsim.data.records import CatalogRecord
from clothsim.fileio import atomic_path, write_json
from clothsim.images import UNUSABLE_IMAGE_ERRORS, load_image

logger = logging.getLogger(__name__)

INSTANCE_SPLIT = "instance"
MIN_KEPT, JPEG_QUALITY, JITTER = 0.8, 70, 0.1
_INDEX_FILE = "copies.json"


@dataclass(frozen=True)
class InstanceResult:
    """Recall@1 of altered gallery copies against the gallery.

    Attributes:
        recall_at_1: Share of copies whose nearest gallery item is their original.
        n_queries: Copies queried.
        seed: Seed of the sample and of the alterations.
    """

    recall_at_1: float
    n_queries: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"recall_at_1": float(self.recall_at_1), "n_queries": self.n_queries, "seed": self.seed,
                "alteration": {"kept_area": [MIN_KEPT, 1.0], "jpeg_quality": JPEG_QUALITY, "jitter": JITTER}}


def alter(image: Image.Image, rng: random.Random) -> Image.Image:
    """One altered copy: crop keeping a random 80-100% of the area (same aspect, random place), brightness,
    contrast and saturation each within +-10%, then a JPEG round trip at quality 70."""
    width, height = image.size
    side = rng.uniform(MIN_KEPT, 1.0) ** 0.5
    crop_w, crop_h = max(1, round(width * side)), max(1, round(height * side))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    out = image.convert("RGB").crop((left, top, left + crop_w, top + crop_h))
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(1.0 + rng.uniform(-JITTER, JITTER))
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return load_image(buffer.getvalue(), max_pixels=None)


def _sample(gallery: Sequence[CatalogRecord], limit: int | None, seed: int) -> list[CatalogRecord]:
    if limit is None or limit >= len(gallery):
        return list(gallery)
    picked = sorted(random.Random(seed).sample(range(len(gallery)), limit))
    return [gallery[i] for i in picked]


def copies_folder(cache: str | Path, gallery: Sequence[CatalogRecord], limit: int | None, seed: int,
                  use_bbox: bool = True) -> Path:
    """Where the copies of this gallery sample live: a new folder whenever the gallery (paths and boxes),
    the alteration, the seed or the sample size change."""
    recipe = [MIN_KEPT, JPEG_QUALITY, JITTER, use_bbox, [(r.path, r.bbox) for r in gallery]]
    digest = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:12]
    return Path(cache) / "instance-copies" / f"{digest}-seed{seed}-n{limit if limit is not None else 'all'}"


def make_altered_copies(gallery: Sequence[CatalogRecord], folder: str | Path, *, limit: int | None = None,
                        seed: int = 0, use_bbox: bool = True) -> list[CatalogRecord]:
    """Write one altered copy per sampled gallery photo into ``folder`` (reused when complete); with
    ``use_bbox`` (as the gallery was encoded) the copy is of the garment's box.

    Returns records of the copies (split ``"instance"``); ``item_id`` is the original's path. Originals
    that cannot be read are left out (the gallery left them out too) and logged.
    """
    folder = Path(folder)
    index_path = folder / _INDEX_FILE
    if index_path.is_file():
        try:
            saved = json.loads(index_path.read_text(encoding="utf-8"))
            records = [CatalogRecord(str(folder / row["file"]), row["category"], INSTANCE_SPLIT, row["original"])
                       for row in saved["copies"]]
            if all(Path(r.path).is_file() for r in records):
                return records
        except (OSError, ValueError, KeyError, TypeError):
            pass  # damaged or partial: written again below
    folder.mkdir(parents=True, exist_ok=True)
    records, rows, unreadable = [], [], []
    for number, original in enumerate(_sample(gallery, limit, seed)):
        try:
            image = load_image(original.path, bbox=original.bbox if use_bbox else None)  # as the gallery saw it
        except UNUSABLE_IMAGE_ERRORS as exc:
            unreadable.append(f"{original.path} ({exc})")
            continue
        # One generator per photo: a copy does not change when the sample around it does.
        rng = random.Random(f"{seed}:{original.path}")
        name = f"{number:06d}.jpg"
        with atomic_path(folder / name) as tmp:
            alter(image, rng).save(tmp, format="JPEG", quality=95)
        records.append(CatalogRecord(str(folder / name), original.category, INSTANCE_SPLIT, original.path))
        rows.append({"file": name, "category": original.category, "original": original.path})
    if unreadable:
        logger.warning("instance guard: %d gallery photo(s) could not be read and have no copy: %s",
                       len(unreadable), "; ".join(unreadable[:5]))
    write_json(index_path, {"seed": seed, "limit": limit, "copies": rows})  # last: marks the folder complete
    return records


def instance_recall(copy_vectors: np.ndarray, copy_originals: Sequence[str], gallery_vectors: np.ndarray,
                    gallery_paths: Sequence[str], seed: int = 0) -> InstanceResult | None:
    """Recall@1 of the copies: the nearest gallery vector (cosine) must be the original's.

    Copies whose original is not in the gallery (it failed to encode there) are not counted; ``None``
    when no copy is left to count.
    """
    row_of = {path: i for i, path in enumerate(gallery_paths)}
    keep = [i for i, original in enumerate(copy_originals) if original in row_of]
    if not keep or gallery_vectors.shape[0] == 0:
        return None
    queries = np.asarray(copy_vectors[keep], dtype=np.float32)
    target = np.array([row_of[copy_originals[i]] for i in keep])
    nearest = np.empty(len(keep), dtype=np.int64)
    gallery = np.asarray(gallery_vectors, dtype=np.float32)
    step = max(1, min(1024, (1 << 26) // gallery.shape[0]))  # score blocks of at most 256 MiB
    for start in range(0, len(keep), step):
        nearest[start:start + step] = np.argmax(queries[start:start + step] @ gallery.T, axis=1)
    return InstanceResult(float(np.mean(nearest == target)), len(keep), seed)
