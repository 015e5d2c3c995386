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

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clothsim.engines import DecodePhoto, EncodedShard
from clothsim.errors import ClothsimError, UsageError
from clothsim.optional import install_hint, is_installed

if TYPE_CHECKING:
    from clothsim.data.records import CatalogRecord
    from clothsim.encoders.base import Encoder

logger = logging.getLogger(__name__)

INSTALL_HINT = install_hint("distributed")


class EncodeBatch:
    """One Ray actor: builds the encoder once, then decodes and encodes batches of records.

    Args:
        spec: ``EncoderSpec.to_dict()`` of the driver's encoder.
        use_bbox: Crop to boxes, as the driver was asked.
        model_bytes: The content of the spec's model file, when it has one (workers may not see the
            driver's files); written to a local file and checked against the spec's SHA-256.
        network: The driver's encoder itself, for one that no plug-in can build again from its spec
            (made by hand in the driver); Ray pickles it.
        runtime: The runtime to run it with, as on the driver.
    """

    def __init__(self, spec: dict[str, Any], use_bbox: bool, model_bytes: bytes | None = None,
                 network: Any = None, runtime: str = "auto") -> None:
        from clothsim.encoders.factory import build_encoder
        from clothsim.encoders.spec import EncoderSpec

        wanted = EncoderSpec.from_dict(spec)
        if network is not None:
            self.encoder = network
        else:
            if model_bytes is not None:
                handle = tempfile.NamedTemporaryFile(prefix="clothsim-model-", suffix=".onnx", delete=False)
                handle.write(model_bytes)
                handle.close()
                wanted = wanted.with_model(handle.name, wanted.model_sha256)  # type: ignore[arg-type]
            self.encoder = build_encoder(wanted, runtime=runtime)
        got = json.loads(json.dumps(self.encoder.fingerprint(), default=str))
        want = json.loads(json.dumps(wanted.fingerprint(), default=str))
        if got != want:
            raise ClothsimError(f"a Ray worker on {os.uname().nodename} built {wanted.name} with another setup "
                                f"(weights {got.get('weights')!r}, driver has {want.get('weights')!r}); every node "
                                "needs the same weights file at the same path")
        self.decode = DecodePhoto(self.encoder.transform, use_bbox=use_bbox, min_side=self.encoder.decode_min_side)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from clothsim.encoders.base import collate

        rows = batch["row"]
        good, inputs = [], []
        errors = np.full(len(rows), "", dtype=object)
        for position, (path, box) in enumerate(zip(batch["path"], batch["bbox"])):
            bbox = tuple(int(v) for v in box) if len(box) == 4 else None
            value, reason = self.decode(str(path), bbox)  # local paths and URIs
            if reason is None:
                inputs.append(value)
                good.append(position)
            else:
                errors[position] = reason
        vectors = np.zeros((len(rows), self.encoder.dim), dtype=np.float32)
        if good:
            vectors[good] = self.encoder.embed(collate(inputs))
        return {"row": rows, "vector": vectors, "error": errors.astype(str)}


class RayEngine:
    """The ``ray`` plug-in (``--engine ray``)."""

    description = "a Ray cluster (Ray Data map_batches over an actor pool); --ray-address, --actors"

    def unavailable_reason(self) -> str | None:
        return None if is_installed("ray") else f"ray is not installed: {INSTALL_HINT}"

    def check(self, ray_address: str | None = None, **options: Any) -> None:
        """Reach the cluster at ``ray_address`` now, before any work (a local Ray needs no check)."""
        if ray_address is None:
            return
        import ray

        started_here = _connect(ray, ray_address)
        if started_here:
            ray.shutdown()

    def iter_shards(self, records: Sequence["CatalogRecord"], shard_size: int, encoder: "Encoder", *,
                    batch_size: int, num_workers: int, use_bbox: bool, progress: bool,
                    ray_address: str | None = None, actors: int | None = None,
                    **options: Any) -> Iterator[EncodedShard]:
        import ray
        from tqdm.auto import tqdm

        spec = encoder.spec
        started_here = _connect(ray, ray_address)
        try:
            dataset = _dataset(ray, records)
            model_bytes, network = None, None
            path = spec.model_path()
            if path is not None:
                model_bytes = path.read_bytes()
            elif not _rebuildable(spec.name):
                network = encoder  # made by hand: no plug-in can build it again from its spec
            pool = actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)
            encoded = dataset.map_batches(
                EncodeBatch, batch_size=batch_size, batch_format="numpy",
                fn_constructor_kwargs={"spec": spec.to_dict(), "use_bbox": use_bbox, "model_bytes": model_bytes,
                                       "network": network, "runtime": getattr(encoder, "runtime", "auto")},
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool), num_cpus=1)
            yield from _shards(encoded, records, shard_size,
                               tqdm(total=len(records), unit="img", desc=f"encoding on Ray ({encoder.name})",
                                    disable=not progress))
        finally:
            if started_here:
                ray.shutdown()


def _rebuildable(name: str) -> bool:
    """Whether a plug-in can build the encoder called ``name`` again (in a Ray worker)."""
    from clothsim.encoders.factory import ready_spec
    from clothsim.errors import UsageError

    try:
        ready_spec(name)
    except UsageError:  # unknown name: registered in the driver's code only, or made by hand
        return False
    return True


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
        # Ray's own message names its CLI's --address flag; clothsim's option is another.
        logger.debug("ray.init(address=%r) failed: %s", address, exc)
        raise UsageError(f"cannot reach a Ray cluster at {address!r}: no running Ray instance answered there; start "
                         "one (ray start --head) or give its address with --ray-address ray://HOST:10001 (Python: "
                         "engine_options={'ray_address': ...}), or leave the address out to start Ray on this "
                         "machine") from exc
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


def _shards(encoded: Any, records: Sequence["CatalogRecord"], shard_size: int, bar: Any) -> Iterator[EncodedShard]:
    n_shards = (len(records) + shard_size - 1) // shard_size
    shard, rows, vectors, failures = 0, [], [], []
    started = time.perf_counter()
    with bar:
        for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
            for row, vector, error in zip(batch["row"], batch["vector"], batch["error"]):
                row = int(row)
                while row >= (shard + 1) * shard_size:  # the batch reached the next shard
                    yield _finish(shard, rows, vectors, failures)
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
            yield _finish(shard, rows, vectors, failures)
            shard, rows, vectors, failures = shard + 1, [], [], []


def _finish(shard: int, rows: list[int], vectors: list[np.ndarray], failures: list[dict[str, str]]) -> EncodedShard:
    outputs = np.stack(vectors).astype(np.float32) if vectors else None
    return EncodedShard(shard, rows, outputs, failures)
