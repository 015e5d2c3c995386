"""Exact copies: catalogue entries whose files hold the same bytes (and, in a catalogue with boxes, the
same box), found by content hash.

Only files that share their size with another are read (two files of different sizes cannot be
copies), so a catalogue of distinct photos costs one look at the sizes the index already recorded.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def content_hash(path: str) -> str | None:
    """SHA-256 of a file's bytes, or ``None`` when it cannot be read any more (gone since indexing)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        logger.info("not checked for exact copies: %s (%s)", path, exc)
        return None
    return digest.hexdigest()


def exact_copy_groups(store: "FeatureStore") -> list[list[int]]:
    """Groups of live ids whose files are byte-identical (and whose boxes are the same), each sorted."""
    ids = store.all_ids()
    live = store.live_mask()
    sizes, _ = store.source_signatures()
    table = store.metadata_table()
    paths, boxes = table.column("path").to_pylist(), table.column("bbox").to_pylist()
    by_size: dict[tuple, list[int]] = defaultdict(list)
    for row in np.flatnonzero(live):
        by_size[(int(sizes[row]), tuple(boxes[row] or ()))].append(int(row))
    by_content: dict[tuple, list[int]] = defaultdict(list)
    for (size, box), rows in by_size.items():
        if len(rows) < 2 or size < 0:  # a size the index never knew (no file behind it) matches nothing
            continue
        for row in rows:
            digest = content_hash(paths[row]) if "://" not in paths[row] else None
            if digest is not None:
                by_content[(digest, box)].append(int(ids[row]))
    return sorted(sorted(group) for group in by_content.values() if len(group) > 1)
