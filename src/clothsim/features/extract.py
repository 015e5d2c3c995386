"""Batched feature extraction from a catalogue into a :class:`FeatureStore`, resumable.

Images are decoded in DataLoader worker processes while the main process runs the encoder, so
decoding and inference overlap. Work is cut into shards; each finished shard is written atomically
under ``<store>/_extraction/``, so an interrupted run started again with the same catalogue and
encoder only does the shards that are missing. A file that cannot be decoded is skipped, counted and
reported by path; a batch made only of such files is simply empty.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from clothsim.data.records import CatalogRecord
from clothsim.encoders.base import Encoder
from clothsim.errors import EmptyCatalogError, StaleStoreError, UsageError
from clothsim.features.store import FeatureStore, fingerprint_mismatch
from clothsim.fileio import read_jsonl, write_json, write_jsonl, write_npy
from clothsim.images import UNUSABLE_IMAGE_ERRORS, load_image

logger = logging.getLogger(__name__)

WORK_DIR = "_extraction"


@dataclass
class ExtractionReport:
    """What an extraction did.

    ``n_encoded`` counts the vectors in the store, ``n_new`` those this run computed (the rest came from
    a resumed or reused run), ``seconds`` this run's time; ``failures`` lists ``{"path", "reason"}``
    for every skipped file.
    """

    store_dir: Path
    n_records: int
    n_encoded: int
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    n_new: int = 0
    resumed_shards: int = 0
    reused: bool = False

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        return self.n_new / self.seconds if self.seconds > 0 and self.n_new else float("nan")


class _ImageDataset(Dataset):
    """Decodes and transforms one record; errors come back as values, not exceptions."""

    def __init__(self, records: Sequence[CatalogRecord], transform: Callable[[Any], Any], use_bbox: bool):
        self.records = records
        self.transform = transform
        self.use_bbox = use_bbox

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        record = self.records[index]
        try:
            image = load_image(record.path, bbox=record.bbox if self.use_bbox else None)
        except UNUSABLE_IMAGE_ERRORS as exc:
            return index, None, str(exc)
        return index, self.transform(image), None


def _collate(items: list[tuple[int, Any, str | None]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    good = [(i, x) for i, x, err in items if err is None]
    bad = [(i, err) for i, _, err in items if err is not None]
    batch = default_collate([x for _, x in good]) if good else None
    return [i for i, _ in good], batch, bad


def catalog_hash(records: Sequence[CatalogRecord]) -> str:
    """A digest of the catalogue (paths, labels, boxes), to tell a resumed run it is the same work."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record.to_dict(), sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


@dataclass
class EncodedShard:
    """One finished shard of :func:`iter_encoded_shards`: its number, the records that decoded (by
    catalogue index, in order), their outputs stacked, and ``{"path", "reason"}`` for those that did not."""

    shard: int
    indices: list[int]
    outputs: np.ndarray | None
    failures: list[dict[str, str]]


def iter_encoded_shards(
    records: Sequence[CatalogRecord],
    shards: Sequence[int],
    shard_size: int,
    transform: Callable[[Any], Any],
    compute: Callable[[Any], np.ndarray],
    *,
    batch_size: int,
    num_workers: int,
    use_bbox: bool = True,
    progress: bool = True,
    desc: str = "encoding",
) -> Iterator[EncodedShard]:
    """Decode (in worker processes) and run ``compute`` over the given shards, yielding each when done.

    The one loop behind every resumable extraction (feature stores, the Siamese feature-map cache): the
    caller decides which shards are missing and how a finished shard is written.
    """
    # Batches never straddle two shards, so each shard is complete when its last batch arrives.
    batches = [list(range(lo, min(lo + batch_size, (s + 1) * shard_size, len(records))))
               for s in shards for lo in range(s * shard_size, min((s + 1) * shard_size, len(records)), batch_size)]
    loader = DataLoader(_ImageDataset(records, transform, use_bbox), batch_sampler=batches,
                        collate_fn=_collate, num_workers=num_workers)
    pending: dict[int, dict[str, list]] = {}
    with tqdm(total=sum(len(b) for b in batches), unit="img", desc=desc, disable=not progress) as bar:
        for good, batch, bad in loader:
            indices = good + [i for i, _ in bad]
            shard = indices[0] // shard_size
            acc = pending.setdefault(shard, {"idx": [], "out": [], "bad": []})
            if batch is not None:
                acc["out"].append(compute(batch))
                acc["idx"].extend(good)
            for i, reason in bad:
                logger.warning("skipping %s", reason)
                acc["bad"].append({"path": records[i].path, "reason": reason})
            bar.update(len(indices))
            if max(indices) == min((shard + 1) * shard_size, len(records)) - 1:
                del pending[shard]
                outputs = np.concatenate(acc["out"]) if acc["out"] else None
                yield EncodedShard(shard, acc["idx"], outputs, acc["bad"])


def _shard_files(work: Path, shard: int) -> tuple[Path, Path, Path]:
    base = work / f"shard-{shard:06d}"
    return base.with_suffix(".npy"), base.with_suffix(".jsonl"), base.with_suffix(".failed.jsonl")


def extract_features(
    records: Sequence[CatalogRecord],
    encoder: Encoder,
    store_dir: str | Path,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    dtype: str = "float32",
    shard_size: int = 1024,
    use_bbox: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    extra_manifest: dict[str, Any] | None = None,
) -> ExtractionReport:
    """Encode every record's image into a feature store at ``store_dir``.

    Args:
        records: The catalogue, e.g. from :func:`clothsim.data.read_catalog`.
        encoder: From :func:`clothsim.create_encoder`.
        store_dir: Output folder. A complete store there made from the same catalogue and encoder is
            reused as it is; a partial one is resumed.
        batch_size: Images per forward pass.
        num_workers: DataLoader worker processes decoding images (0 decodes in this process).
        dtype: ``"float32"`` or ``"float16"`` on disk.
        shard_size: Images per resumable unit of work.
        use_bbox: Crop to each record's bounding box where it has one.
        overwrite: Replace a store made with another encoder or catalogue instead of refusing.
        progress: Show a tqdm progress bar.
        extra_manifest: More fields to stamp on the manifest (e.g. where the weights came from).

    Raises:
        EmptyCatalogError: ``records`` is empty.
        StaleStoreError: ``store_dir`` holds another encoder's or catalogue's store and not ``overwrite``.
    """
    if not records:
        raise EmptyCatalogError("the catalogue has no images to encode")
    if batch_size < 1 or shard_size < 1:
        raise UsageError("batch_size and shard_size must be at least 1")
    store_dir = Path(store_dir)
    fingerprint = encoder.fingerprint()
    source = catalog_hash(records)
    started = time.perf_counter()

    # Cropping changes the vectors, so it is part of what a store is checked against; it only has an
    # effect when some record has a box.
    crops = use_bbox and any(r.bbox is not None for r in records)
    if FeatureStore.exists(store_dir):
        store = FeatureStore.open(store_dir)
        same_encoder = not fingerprint_mismatch(fingerprint, store.fingerprint)
        same_source = store.manifest.get("source_hash") == source and store.dtype == dtype
        stored_crops = store.manifest.get("crop_to_bbox")
        if stored_crops is None and not any(r.bbox is not None for r in records):
            stored_crops = False  # an older store over records without boxes: nothing was cropped
        same_crops = stored_crops == crops
        if same_encoder and same_source and same_crops:
            logger.info("%s already holds these %d images encoded by %s; reusing it",
                        store_dir, len(records), encoder.name)
            return ExtractionReport(store_dir, len(records), store.total_rows, store.failures, reused=True)
        if not overwrite:
            if not same_encoder:
                what = "another encoder setup"
            elif not same_source:
                what = "another catalogue or dtype"
            else:
                had = {True: "cropped to bounding boxes", False: "not cropped", None: "an unrecorded crop setting"}
                what = (f"images {had[stored_crops]}, and this run asks for them "
                        f"{had[crops]} ({'use_bbox' if use_bbox else '--no-bbox'})")
            raise StaleStoreError(f"{store_dir} holds a store made with {what}; pass overwrite=True "
                                  "(--overwrite) to re-encode it, or choose another folder")
        logger.warning("replacing the store at %s", store_dir)
        shutil.rmtree(store_dir)

    work = store_dir / WORK_DIR
    plan = json.loads(json.dumps({"fingerprint": fingerprint, "source_hash": source, "shard_size": shard_size,
                                  "n_records": len(records), "dtype": dtype, "use_bbox": use_bbox}))
    plan_path = work / "plan.json"
    if plan_path.is_file() and json.loads(plan_path.read_text()) != plan:
        logger.warning("%s holds an unfinished extraction of other work; starting afresh", work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not plan_path.is_file():
        write_json(plan_path, plan)

    n_shards = (len(records) + shard_size - 1) // shard_size
    done = {s for s in range(n_shards) if _shard_files(work, s)[0].is_file()}
    if done:
        logger.info("resuming: %d of %d shards already done", len(done), n_shards)
    todo = [s for s in range(n_shards) if s not in done]

    n_new = 0
    for done_shard in iter_encoded_shards(records, todo, shard_size, encoder.transform, encoder.embed,
                                          batch_size=batch_size, num_workers=num_workers, use_bbox=use_bbox,
                                          progress=progress, desc=f"encoding ({encoder.name})"):
        vec_file, meta_file, bad_file = _shard_files(work, done_shard.shard)
        vectors = done_shard.outputs if done_shard.outputs is not None else np.zeros((0, encoder.dim))
        write_jsonl(bad_file, done_shard.failures)
        write_jsonl(meta_file, (records[i].to_dict() for i in done_shard.indices))
        write_npy(vec_file, vectors.astype(dtype))  # last: its presence marks the shard done
        n_new += len(done_shard.indices)
    compute_seconds = time.perf_counter() - started

    store = FeatureStore.create(store_dir, fingerprint, dtype=dtype, extra=extra_manifest)
    failures: list[dict[str, str]] = []
    for s in range(n_shards):
        vec_file, meta_file, bad_file = _shard_files(work, s)
        failures.extend(read_jsonl(bad_file))
        rows = int(np.load(vec_file, mmap_mode="r").shape[0])
        store.adopt_segment(vec_file, meta_file, rows)
    # Throughput of this run, kept so a report that reuses the store can still say how fast it was built.
    speed = n_new / compute_seconds if n_new and compute_seconds > 0 else None
    store.commit(source_hash=source, failures=failures, n_source_records=len(records),
                 use_bbox=use_bbox, crop_to_bbox=crops, runtime=getattr(encoder, "runtime", "torch"),
                 extraction={"seconds": round(compute_seconds, 3), "n_encoded": n_new,
                             "resumed_shards": len(done), "images_per_second": speed})
    shutil.rmtree(work)
    if failures:
        logger.warning("%d of %d images could not be decoded and were skipped", len(failures), len(records))
    return ExtractionReport(store_dir, len(records), store.total_rows, failures,
                            seconds=compute_seconds, n_new=n_new, resumed_shards=len(done))
