"""The ``local`` engine: decoding threads of this process feed the runtime batch after batch.

Decoding and preprocessing (Pillow and numpy, which release the GIL while they work) run in a small
pool of threads, a bounded number of photos ahead of the network, while the runtime encodes the batch
before; so decoding overlaps the forward pass, and memory holds at most that window of decoded photos
whatever the catalogue's size. Threads rather than processes: a decoded photo then reaches the network
without being copied between processes (``benchmarks/extraction.py`` compares the two).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from clothsim.encoders.base import collate
from clothsim.engines import DecodePhoto, EncodedShard

if TYPE_CHECKING:
    from clothsim.data.records import CatalogRecord
    from clothsim.encoders.base import Encoder

logger = logging.getLogger(__name__)

#: Photos decoded ahead of the network per decoding thread, beyond the batch being filled.
AHEAD_PER_WORKER = 8


class LocalEngine:
    """Decoding threads of this process hand batches to the encoder's runtime."""

    description = "this machine: decoding threads feed the runtime batch by batch (default)"

    def unavailable_reason(self) -> str | None:
        return None

    def iter_shards(self, records: Sequence["CatalogRecord"], shard_size: int, encoder: "Encoder", *,
                    batch_size: int, num_workers: int, use_bbox: bool, progress: bool,
                    **options: Any) -> Iterator[EncodedShard]:
        shards = range((len(records) + shard_size - 1) // shard_size)
        yield from iter_encoded_shards(records, shards, shard_size, encoder.transform, encoder.embed,
                                       batch_size=batch_size, num_workers=num_workers, use_bbox=use_bbox,
                                       progress=progress, desc=f"encoding ({encoder.name})",
                                       min_side=encoder.decode_min_side)


def iter_decoded(items: Sequence[tuple[str, Any]], decode: Callable[[str, Any], tuple[Any, str | None]],
                 workers: int, ahead: int) -> Iterator[tuple[Any, str | None]]:
    """``decode(path, bbox)`` of every item, in order, by ``workers`` threads (``0``: in this thread),
    at most ``ahead`` items beyond the one being handed out."""
    if workers <= 0:
        for path, bbox in items:
            yield decode(path, bbox)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clothsim-decode") as pool:
        window: deque[Future] = deque()
        position = 0
        try:
            while position < len(items) or window:
                while position < len(items) and len(window) <= ahead:
                    path, bbox = items[position]
                    window.append(pool.submit(decode, path, bbox))
                    position += 1
                yield window.popleft().result()
        finally:
            for future in window:  # an abandoned run (an error, a closed generator) stops decoding at once
                future.cancel()


def iter_encoded_shards(
    records: Sequence["CatalogRecord"],
    shards: Iterable[int],
    shard_size: int,
    transform: Callable[[Any], Any],
    compute: Callable[[Any], np.ndarray],
    *,
    batch_size: int,
    num_workers: int,
    use_bbox: bool = True,
    progress: bool = True,
    desc: str = "encoding",
    min_side: int | None = None,
) -> Iterator[EncodedShard]:
    """Decode (in ``num_workers`` threads) and run ``compute`` over the given shards, yielding each when
    done.

    The one loop behind every resumable extraction on this machine (feature stores, the Siamese
    feature-map cache): the caller decides which shards are missing and how a finished shard is written.
    ``min_side`` lets JPEGs decode at a reduced scale down to that short side (see
    :func:`clothsim.images.load_image`).
    """
    shards = list(shards)
    positions = [i for s in shards for i in range(s * shard_size, min((s + 1) * shard_size, len(records)))]
    decode = DecodePhoto(transform, use_bbox=use_bbox, min_side=min_side)
    decoded = iter_decoded([(records[i].path, records[i].bbox) for i in positions], decode, num_workers,
                           ahead=batch_size + AHEAD_PER_WORKER * max(num_workers, 1))
    with tqdm(total=len(positions), unit="img", desc=desc, disable=not progress) as bar:
        cursor = 0
        for shard in shards:
            end = min((shard + 1) * shard_size, len(records))
            indices: list[int] = []
            outputs: list[np.ndarray] = []
            failures: list[dict[str, str]] = []
            # Batches never straddle two shards, so each shard is complete when its last batch is.
            for lo in range(shard * shard_size, end, batch_size):
                good, inputs = [], []
                for index in range(lo, min(lo + batch_size, end)):
                    value, reason = next(decoded)
                    cursor += 1
                    if reason is None:
                        good.append(index)
                        inputs.append(value)
                    else:
                        logger.warning("skipping %s", reason)
                        failures.append({"path": records[index].path, "reason": reason})
                if inputs:
                    outputs.append(np.asarray(compute(collate(inputs))))
                    indices.extend(good)
                bar.update(min(lo + batch_size, end) - lo)
            yield EncodedShard(shard, indices, np.concatenate(outputs) if outputs else None, failures)
    if cursor != len(positions):
        raise AssertionError(f"decoded {cursor} of {len(positions)} photos")
