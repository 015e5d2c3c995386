"""A duplicate threshold chosen from the catalogue's own photos, not guessed.

A seeded sample of the index's photos gets one altered copy of each kind (resized, re-compressed,
cropped, mirrored, retouched: :mod:`clothsim.duplicates.alterations`). Each copy is searched in the index:
the pair (copy, its original) is a known duplicate, and every other item the copy scores at least the
threshold with is a false alarm, unless that item is at least the threshold from the original itself (a
copy the catalogue already holds: the duplicate search groups it with the original too). For each threshold the table gives pair recall (per kind and overall) and precision; the
recommendation is the threshold with the highest recall at a precision of at least
:data:`TARGET_PRECISION`, else the one with the best F1.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from clothsim.defaults import DEFAULT_CALIBRATION_SAMPLE
from clothsim.duplicates.alterations import KINDS, altered_copies
from clothsim.encoders.base import collate
from clothsim.errors import DataError, UsageError

if TYPE_CHECKING:
    from clothsim.similarity_index import SimilarityIndex

logger = logging.getLogger(__name__)

TARGET_PRECISION = 0.98
#: Items looked at per copy: false alarms beyond them would not be paired by a duplicate search either.
CALIBRATION_NEIGHBOURS = 20
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.70, 1.0, 0.01))


@dataclass
class ThresholdRow:
    threshold: float
    recall: float
    precision: float
    false_alarms: int
    recall_by_kind: dict[str, float]

    @property
    def f1(self) -> float:
        return 0.0 if self.recall + self.precision == 0 else 2 * self.recall * self.precision / (self.recall + self.precision)


@dataclass
class Calibration:
    """The measured table and the threshold it recommends."""

    rows: list[ThresholdRow]
    recommended: float
    reason: str
    n_originals: int
    n_copies: int
    seed: int
    skipped: list[str] = field(default_factory=list)

    def row(self, threshold: float) -> ThresholdRow:
        return min(self.rows, key=lambda r: abs(r.threshold - threshold))

    def to_record(self) -> dict[str, Any]:
        """What the index keeps of it (the recommendation and its row)."""
        chosen = self.row(self.recommended)
        return {"threshold": self.recommended, "reason": self.reason, "originals": self.n_originals,
                "copies": self.n_copies, "seed": self.seed, "recall": round(chosen.recall, 4),
                "precision": round(chosen.precision, 4),
                "recall_by_kind": {k: round(v, 4) for k, v in chosen.recall_by_kind.items()}}


def calibrate(index: "SimilarityIndex", sample: int = DEFAULT_CALIBRATION_SAMPLE, seed: int = 0,
              progress: bool = True) -> Calibration:
    """Measure precision and recall per threshold on altered copies of ``sample`` of the index's photos.

    Raises:
        UsageError: a sample below 1.
        DataError: the index has fewer than two items, or none of the sampled photos can be read.
    """
    from clothsim.images import UNUSABLE_IMAGE_ERRORS, load_image

    if sample < 1:
        raise UsageError(f"the calibration sample must be at least 1 photo, got {sample}")
    store = index.store
    ids = store.live_ids()
    if ids.size < 2:
        raise DataError(f"{store.root} needs at least two items to calibrate a duplicate threshold")
    picked = sorted(random.Random(seed).sample(ids.tolist(), min(sample, ids.size)))
    records = store.records_for(np.asarray(picked, dtype=np.int64))
    crop = bool(store.manifest.get("use_bbox", True))
    transform = index.encoder.transform
    originals: list[int] = []
    kinds: list[str] = []
    vectors: list[np.ndarray] = []
    skipped: list[str] = []
    batch: list[Any] = []
    for item, record in tqdm(list(zip(picked, records)), desc="altered copies", unit="photo", disable=not progress):
        try:
            image = load_image(record.path, bbox=record.bbox if crop else None)
        except UNUSABLE_IMAGE_ERRORS as exc:
            skipped.append(str(exc))
            continue
        for kind, copy in altered_copies(image, f"{seed}:{record.path}").items():
            batch.append(transform(copy))
            originals.append(item)
            kinds.append(kind)
        if len(batch) >= 32:
            vectors.append(index.encoder.embed(collate(batch)))
            batch = []
    if batch:
        vectors.append(index.encoder.embed(collate(batch)))
    if not vectors:
        raise DataError(f"none of the {len(picked)} sampled photos of {store.root} could be read: "
                        + "; ".join(skipped[:3]))
    copies = np.concatenate(vectors)
    rows = _table(index, copies, np.asarray(originals), np.asarray(kinds))
    recommended, reason = _recommend(rows)
    return Calibration(rows, recommended, reason, len(set(originals)), len(originals), seed, skipped)


def _table(index: "SimilarityIndex", copies: np.ndarray, originals: np.ndarray, kinds: np.ndarray) -> list[ThresholdRow]:
    store = index.store
    k = min(CALIBRATION_NEIGHBOURS, len(store))
    from clothsim.duplicates.neighbours import neighbour_source

    source, _ = neighbour_source(store, index.backend)
    ids, scores = source.neighbours(copies, k)
    # How alike each item a copy found is to the copy's original: an item that is itself a near-duplicate
    # of the original at the threshold under test (a copy the catalogue already holds, or the same photo
    # stored twice) is no false alarm; the duplicate search would group it with the original too.
    unique = np.unique(originals)
    own_of = dict(zip(unique.tolist(), store.vectors_for(unique)))
    valid = ids >= 0
    to_original = np.full(ids.shape, -np.inf, dtype=np.float32)
    for row in range(ids.shape[0]):
        cols = np.flatnonzero(valid[row])
        if cols.size:
            to_original[row, cols] = store.vectors_for(ids[row, cols]) @ own_of[int(originals[row])]
    is_original = valid & (ids == originals[:, None])
    others = valid & ~is_original
    rows = []
    for t in THRESHOLDS:
        above = scores >= t
        found = (is_original & above).any(axis=1)
        alarms = int((others & above & (to_original < t)).sum())
        tp = int(found.sum())
        precision = tp / (tp + alarms) if tp + alarms else 1.0
        by_kind = {kind: float(found[kinds == kind].mean()) for kind in KINDS if (kinds == kind).any()}
        rows.append(ThresholdRow(float(t), float(found.mean()), float(precision), alarms, by_kind))
    return rows


def _recommend(rows: list[ThresholdRow]) -> tuple[float, str]:
    precise = [r for r in rows if r.precision >= TARGET_PRECISION]
    if precise:
        best = max(precise, key=lambda r: (r.recall, r.threshold))  # on a tie, the stricter threshold
        return best.threshold, f"the highest recall at precision >= {TARGET_PRECISION}"
    best = max(rows, key=lambda r: (r.f1, r.threshold))
    logger.warning("no threshold reaches precision %.2f on this index; recommending the best F1 (%.3f)",
                   TARGET_PRECISION, best.f1)
    return best.threshold, f"the best F1 (no threshold reached precision {TARGET_PRECISION})"


def record_calibration(index: "SimilarityIndex", calibration: Calibration) -> None:
    """Keep the recommended threshold with the index (the duplicate search and collapsed searches use it)."""
    from clothsim.duplicates.finder import MANIFEST_KEY

    store = index.store
    record = {**(store.manifest.get(MANIFEST_KEY) or {}), "threshold": calibration.recommended,
              "calibration": calibration.to_record()}
    store.commit(**{MANIFEST_KEY: record})
