"""The ``local`` engine: decoding in worker processes of this machine, encoding in this process."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clothsim.data.records import CatalogRecord
    from clothsim.encoders.base import Encoder
    from clothsim.features.extract import EncodedShard


class LocalEngine:
    """PyTorch DataLoader workers decode while the encoder runs on the batches they hand over."""

    description = "this machine: DataLoader processes decode, the runtime encodes (default)"

    def unavailable_reason(self) -> str | None:
        return None

    def iter_shards(self, records: Sequence["CatalogRecord"], shard_size: int, encoder: "Encoder", *,
                    batch_size: int, num_workers: int, use_bbox: bool, progress: bool,
                    **options: Any) -> Iterator["EncodedShard"]:
        from clothsim.features.extract import iter_encoded_shards

        shards = range((len(records) + shard_size - 1) // shard_size)
        yield from iter_encoded_shards(records, shards, shard_size, encoder.transform, encoder.embed,
                                       batch_size=batch_size, num_workers=num_workers, use_bbox=use_bbox,
                                       progress=progress, desc=f"encoding ({encoder.name})",
                                       min_side=getattr(encoder, "decode_min_side", None))
