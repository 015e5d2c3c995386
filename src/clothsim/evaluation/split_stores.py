"""Where cached feature stores live, and how a split of a catalogue is encoded into one.

Layout: ``<cache>/<encoder slug>/<split>/`` holds the store of one split's records (in catalogue order),
so ``clothsim evaluate`` and ``clothsim fit-ensemble`` pointed at the same cache share the work.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clothsim.data.records import CatalogRecord
from clothsim.encoders.base import Encoder
from clothsim.encoders.factory import weights_source
from clothsim.features.extract import ExtractionReport, extract_features
from clothsim.errors import DataError

ALL_RECORDS = "all"


def encoder_slug(name: str) -> str:
    """A folder name for an encoder name; long or path-like names get a short hash to stay unique."""
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_.") or "encoder"
    if slug != name or len(slug) > 60:
        slug = f"{slug[-40:].strip('_.')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return slug


def split_store_dir(cache: str | Path, encoder_name: str, split: str | None) -> Path:
    """The store folder for ``split`` (``None`` for every record) encoded by ``encoder_name``."""
    return Path(cache) / encoder_slug(encoder_name) / (split or ALL_RECORDS)


def records_of_split(records: Sequence[CatalogRecord], split: str | None) -> list[CatalogRecord]:
    """The records of one split in catalogue order (all of them for ``None``)."""
    return [r for r in records if split is None or r.split == split]


def extract_split(
    records: Sequence[CatalogRecord],
    split: str | None,
    encoder: Encoder,
    cache: str | Path,
    weights: str | Path | None = None,
    **options: Any,
) -> ExtractionReport:
    """Encode one split into its cached store (reused when complete, resumed when partial).

    A cached store made with other weights or another catalogue is replaced: it is a cache.
    ``options`` go to :func:`clothsim.features.extract_features`.

    Raises:
        ValueError: ``split`` has no records.
    """
    subset = records_of_split(records, split)
    if not subset:
        raise DataError(f"the catalogue has no records in split {split!r}")
    store_dir = split_store_dir(cache, encoder.name, split)
    options.setdefault("overwrite", True)
    extra = {"weights_source": weights_source(weights)}
    return extract_features(subset, encoder, store_dir, extra_manifest=extra, **options)
