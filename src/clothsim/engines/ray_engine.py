"""The ``ray`` engine: decoding and encoding spread over a Ray cluster with Ray Data.

The catalogue's records become a Ray Dataset; ``map_batches`` runs :class:`EncodeBatch`, a callable
class that builds the encoder once per actor (ONNX Runtime by default, as locally) from the spec the
driver's encoder was built with, and checks that it has the driver's fingerprint (same weights on every
node). Results stream back in catalogue order and are handed to the same store writer as the local
engine's, shard by shard, so the index is indistinguishable from a local build and an interrupted run
resumes from its last committed shard.

Paths may be local (shared storage mounted at the same place on every node) or URIs that pyarrow's
filesystem layer opens (``s3://``, ``gs://``, ``hdfs://``...).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clothsim.errors import ClothsimError, UsageError

if TYPE_CHECKING:
    from clothsim.data.records import CatalogRecord
    from clothsim.encoders.base import Encoder
    from clothsim.features.extract import EncodedShard

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'clothsim[distributed]'  (Ray Data)"


class EncodeBatch:
    """One Ray actor: builds the encoder once, then decodes and encodes batches of records.

    Args:
        spec: ``EncoderSpec.to_dict()`` of the driver's encoder.
        fingerprint: The driver's encoder fingerprint; the actor refuses to run another model.
        use_bbox: Crop to boxes, as the driver was asked.
        int8_bytes: The quantized model file's content, for an int8 encoder (workers may not see the
            driver's cache folder).
        min_side: Decode JPEGs at a reduced scale down to this short side (the encoder's resize size).
    """

    def __init__(self, spec: dict[str, Any], fingerprint: dict[str, Any], use_bbox: bool,
                 int8_bytes: bytes | None = None, min_side: int | None = None) -> None:
        import json

        from clothsim.encoders.spec import EncoderSpec

        local_int8 = None
        if int8_bytes is not None:
            handle = tempfile.NamedTemporaryFile(prefix="clothsim-int8-", suffix=".onnx", delete=False)
            handle.write(int8_bytes)
            handle.close()
            local_int8 = handle.name
        self.encoder = EncoderSpec.from_dict(spec).build(int8_model=local_int8)
        got = json.loads(json.dumps(self.encoder.fingerprint(), default=str))
        want = json.loads(json.dumps(fingerprint, default=str))
        if got != want:
            raise ClothsimError(f"a Ray worker on {os.uname().nodename} built {spec['name']} with another setup "
                                f"(weights {got.get('weights')!r}, driver has {want.get('weights')!r}); every node "
                                "needs the same weights file at the same path")
        self.transform = self.encoder.transform
        self.use_bbox = use_bbox
        self.min_side = min_side

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from torch.utils.data import default_collate

        from clothsim.images import UNUSABLE_IMAGE_ERRORS, load_image

        rows = batch["row"]
        good, tensors = [], []
        errors = np.full(len(rows), "", dtype=object)
        for position, (path, box) in enumerate(zip(batch["path"], batch["bbox"])):
            bbox = tuple(int(v) for v in box) if self.use_bbox and len(box) == 4 else None
            try:
                image = load_image(str(path), bbox=bbox, min_side=self.min_side)  # local paths and URIs
                tensors.append(self.transform(image))
                good.append(position)
            except UNUSABLE_IMAGE_ERRORS as exc:
                errors[position] = str(exc)
        vectors = np.zeros((len(rows), self.encoder.dim), dtype=np.float32)
        if good:
            vectors[good] = self.encoder.embed(default_collate(tensors))
        return {"row": rows, "vector": vectors, "error": errors.astype(str)}


class RayEngine:
    """The ``ray`` plug-in (``--engine ray``)."""

    description = "a Ray cluster (Ray Data map_batches over an actor pool); --ray-address, --actors"

    def unavailable_reason(self) -> str | None:
        import importlib.util

        return None if importlib.util.find_spec("ray") is not None else f"ray is not installed: {INSTALL_HINT}"

    def iter_shards(self, records: Sequence["CatalogRecord"], shard_size: int, encoder: "Encoder", *,
                    batch_size: int, num_workers: int, use_bbox: bool, progress: bool,
                    ray_address: str | None = None, actors: int | None = None,
                    **options: Any) -> Iterator["EncodedShard"]:
        import ray
        from tqdm.auto import tqdm

        from clothsim.encoders.spec import spec_of
        from clothsim.features.extract import EncodedShard

        spec = spec_of(encoder)
        started_here = _connect(ray, ray_address)
        try:
            dataset = _dataset(ray, records)
            int8_bytes = None
            if spec.int8_model is not None:
                with open(spec.int8_model, "rb") as handle:
                    int8_bytes = handle.read()
            pool = actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)
            encoded = dataset.map_batches(
                EncodeBatch, batch_size=batch_size, batch_format="numpy",
                fn_constructor_kwargs={"spec": spec.to_dict(), "fingerprint": encoder.fingerprint(),
                                       "use_bbox": use_bbox, "int8_bytes": int8_bytes,
                                       "min_side": getattr(encoder, "decode_min_side", None)},
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool), num_cpus=1)
            yield from _shards(encoded, records, shard_size, EncodedShard,
                               tqdm(total=len(records), unit="img", desc=f"encoding on Ray ({encoder.name})",
                                    disable=not progress))
        finally:
            if started_here:
                ray.shutdown()


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` (``auto``, ``ray://HOST:10001``), or start a local Ray; returns
    whether this call started it (and so must stop it)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"CLOTHSIM_CACHE": os.environ.get("CLOTHSIM_CACHE", "")}}
                 if os.environ.get("CLOTHSIM_CACHE") else None)
    except ConnectionError as exc:
        raise UsageError(f"cannot reach a Ray cluster at {address!r}: {exc}") from exc
    return True


def _dataset(ray: Any, records: Sequence["CatalogRecord"]) -> Any:
    import pyarrow as pa

    table = pa.table({
        "row": pa.array(range(len(records)), pa.int64()),
        "path": pa.array([r.path for r in records], pa.string()),
        "bbox": pa.array([list(r.bbox) if r.bbox is not None else [] for r in records], pa.list_(pa.int64())),
    })
    context = ray.data.DataContext.get_current()
    # Rows come back in catalogue order, so shards complete in order and ids match a local build.
    context.execution_options.preserve_order = True
    return ray.data.from_arrow(table)


def _shards(encoded: Any, records: Sequence["CatalogRecord"], shard_size: int, shard_type: type,
            bar: Any) -> Iterator["EncodedShard"]:
    n_shards = (len(records) + shard_size - 1) // shard_size
    shard, rows, vectors, failures = 0, [], [], []
    started = time.perf_counter()
    with bar:
        for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
            for row, vector, error in zip(batch["row"], batch["vector"], batch["error"]):
                row = int(row)
                while row >= (shard + 1) * shard_size:  # the batch reached the next shard
                    yield _finish(shard_type, shard, rows, vectors, failures)
                    shard, rows, vectors, failures = shard + 1, [], [], []
                if error:
                    logger.warning("skipping %s", error)
                    failures.append({"path": records[row].path, "reason": str(error)})
                else:
                    rows.append(row)
                    vectors.append(vector)
            bar.update(len(batch["row"]))
            bar.set_postfix_str(f"{bar.n / max(time.perf_counter() - started, 1e-9):.1f} img/s")
        while shard < n_shards:
            yield _finish(shard_type, shard, rows, vectors, failures)
            shard, rows, vectors, failures = shard + 1, [], [], []


def _finish(shard_type: type, shard: int, rows: list[int], vectors: list[np.ndarray],
            failures: list[dict[str, str]]) -> "EncodedShard":
    outputs = np.stack(vectors).astype(np.float32) if vectors else None
    return shard_type(shard, rows, outputs, failures)
