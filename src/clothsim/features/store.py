"""The feature store: L2-normalised vectors aligned row by row with catalogue metadata.

Layout of a store directory::

    manifest.json          encoder fingerprint, dtype, dim, segment list, failures (the commit point)
    segments/NNNNNN.npy    (rows, dim) float32 or float16 vectors, memory-mapped when read
    segments/NNNNNN.jsonl  one metadata row per vector, same order
    deleted.npy            ids removed since (tombstones), ascending

Ids are integers handed out in order and never reused; segment ``s`` holds ids
``id_start .. id_start + rows - 1``. Adding vectors writes a new segment; deleting writes tombstones;
neither rewrites what is there. Every file is written atomically and the manifest last, so a crash
leaves the previous state readable. One writer at a time.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from clothsim import __version__
from clothsim.data.records import CatalogRecord
from clothsim.errors import StaleStoreError, UsageError
from clothsim.fileio import read_jsonl, write_json, write_jsonl, write_npy

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
# What must match between an encoder and a store for their vectors to be comparable.
_FINGERPRINT_KEYS = ("encoder", "weights", "dim", "preprocessing")


@dataclass(frozen=True)
class StoredItem:
    """A catalogue record with the id it has in a store."""

    id: int
    record: CatalogRecord


def fingerprint_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Names of the fingerprint fields that differ (empty when the two are comparable)."""
    # Compare as stored: JSON turns tuples into lists.
    expected, found = json.loads(json.dumps(expected)), json.loads(json.dumps(found))
    return [key for key in _FINGERPRINT_KEYS if expected.get(key) != found.get(key)]


class FeatureStore:
    """A directory of vectors and metadata; see the module docstring for the layout."""

    def __init__(self, root: str | Path, manifest: dict[str, Any]) -> None:
        self.root = Path(root)
        self._manifest = manifest
        self._items: list[StoredItem] | None = None
        self._by_id: dict[int, StoredItem] | None = None
        self._deleted: np.ndarray | None = None

    # ----- opening and creating -------------------------------------------------------------
    @classmethod
    def exists(cls, root: str | Path) -> bool:
        return (Path(root) / MANIFEST).is_file()

    @classmethod
    def create(
        cls,
        root: str | Path,
        fingerprint: dict[str, Any],
        dtype: str = "float32",
        extra: dict[str, Any] | None = None,
    ) -> "FeatureStore":
        """Start an empty store at ``root`` (which must not hold a store already)."""
        if dtype not in DTYPES:
            raise UsageError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        root = Path(root)
        if cls.exists(root):
            raise FileExistsError(f"{root} already holds a feature store; open it or choose another folder")
        manifest = {
            "format_version": FORMAT_VERSION,
            "clothsim_version": __version__,
            "fingerprint": dict(fingerprint),
            "dtype": dtype,
            "segments": [],
            "next_id": 0,
            "failures": [],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        (root / "segments").mkdir(parents=True, exist_ok=True)
        write_json(root / MANIFEST, manifest)
        return cls(root, manifest)

    @classmethod
    def open(cls, root: str | Path, expect: dict[str, Any] | None = None) -> "FeatureStore":
        """Open an existing store; with ``expect`` (an encoder fingerprint) refuse a stale one.

        Raises:
            FileNotFoundError: ``root`` holds no store.
            StaleStoreError: the store was made with another encoder, weights or preprocessing.
        """
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{root} is not a clothsim feature store (no {MANIFEST})")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StaleStoreError(
                f"{path}: store format {manifest.get('format_version')} is not {FORMAT_VERSION}; rebuild it")
        store = cls(root, manifest)
        if expect is not None:
            store.check_fingerprint(expect)
        return store

    def check_fingerprint(self, expect: dict[str, Any]) -> None:
        """Raise :class:`StaleStoreError` unless ``expect`` matches the stamped fingerprint."""
        diff = fingerprint_mismatch(expect, self.fingerprint)
        if diff:
            details = "; ".join(f"{k}: store has {self.fingerprint.get(k)!r}, encoder has {expect.get(k)!r}"
                                for k in diff)
            raise StaleStoreError(f"{self.root} was built with a different encoder setup ({details}); "
                                  "rebuild it or use the matching encoder")

    # ----- properties -------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self._manifest["fingerprint"]

    @property
    def encoder_name(self) -> str:
        return str(self.fingerprint["encoder"])

    @property
    def dim(self) -> int:
        return int(self.fingerprint["dim"])

    @property
    def dtype(self) -> str:
        return str(self._manifest["dtype"])

    @property
    def failures(self) -> list[dict[str, str]]:
        """Files that could not be decoded when the store was built: ``{"path", "reason"}``."""
        return list(self._manifest.get("failures", []))

    def __len__(self) -> int:
        return self.total_rows - len(self.deleted_ids)

    @property
    def total_rows(self) -> int:
        return sum(int(seg["rows"]) for seg in self._manifest["segments"])

    # ----- reading ------------------------------------------------------------------------
    def _segment_paths(self, seg: dict[str, Any]) -> tuple[Path, Path]:
        base = self.root / "segments" / seg["name"]
        return base.with_suffix(".npy"), base.with_suffix(".jsonl")

    @property
    def deleted_ids(self) -> np.ndarray:
        if self._deleted is None:
            path = self.root / "deleted.npy"
            self._deleted = np.load(path) if path.is_file() else np.zeros(0, dtype=np.int64)
        return self._deleted

    def items(self) -> list[StoredItem]:
        """Every stored record with its id, deleted ones included, in id order (cached)."""
        if self._items is None:
            items: list[StoredItem] = []
            for seg in self._manifest["segments"]:
                _, meta_path = self._segment_paths(seg)
                rows = read_jsonl(meta_path)
                if len(rows) != int(seg["rows"]):
                    raise StaleStoreError(f"{meta_path}: {len(rows)} metadata rows, manifest says {seg['rows']}")
                items.extend(StoredItem(int(seg["id_start"]) + i, CatalogRecord.from_dict(r))
                             for i, r in enumerate(rows))
            self._items = items
        return self._items

    def category_codes(self) -> tuple[np.ndarray, list[str]]:
        """``(codes, categories)``: for every row of :meth:`all_ids` (deleted included) the index of its
        category in the sorted ``categories`` list, as int32. What backends filter and count with."""
        names = [item.record.category for item in self.items()]
        categories = sorted(set(names))
        lookup = {name: code for code, name in enumerate(categories)}
        return np.fromiter((lookup[n] for n in names), dtype=np.int32, count=len(names)), categories

    def records_for(self, ids: Sequence[int] | np.ndarray) -> list[CatalogRecord]:
        """The records of live ``ids``, in the order given (for the hits a search returns)."""
        return [self.get(int(i)).record for i in ids]

    def all_ids(self) -> np.ndarray:
        """Ids of every row, deleted ones included, ascending."""
        parts = [np.arange(s["id_start"], s["id_start"] + s["rows"], dtype=np.int64)
                 for s in self._manifest["segments"]]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def live_ids(self) -> np.ndarray:
        ids = self.all_ids()
        return ids[~np.isin(ids, self.deleted_ids)]

    def get(self, item_id: int) -> StoredItem:
        """The record stored under ``item_id``; ``KeyError`` if unknown or deleted."""
        item_id = int(item_id)
        if self._by_id is None:
            self._by_id = {it.id: it for it in self.items()}
        item = self._by_id.get(item_id)
        if item is None or np.isin(item_id, self.deleted_ids):
            raise KeyError(f"no item with id {item_id} in {self.root}")
        return item

    def vector(self, item_id: int) -> np.ndarray:
        """The stored float32 vector of one item."""
        self.get(item_id)  # raises for unknown or deleted ids
        for seg in self._manifest["segments"]:
            if seg["id_start"] <= item_id < seg["id_start"] + seg["rows"]:
                vec_path, _ = self._segment_paths(seg)
                return np.asarray(np.load(vec_path, mmap_mode="r")[item_id - seg["id_start"]], dtype=np.float32)
        raise KeyError(item_id)  # unreachable: get() already checked

    def iter_blocks(
        self, chunk_rows: int = 16384, row_mask: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids, vectors)`` blocks of live rows from memory-mapped segments.

        Args:
            chunk_rows: Most rows per block (bounds memory).
            row_mask: Optional boolean array over :meth:`all_ids` positions; ``False`` rows are skipped.
        """
        deleted = self.deleted_ids
        offset = 0
        for seg in self._manifest["segments"]:
            rows = int(seg["rows"])
            vec_path, _ = self._segment_paths(seg)
            vectors = np.load(vec_path, mmap_mode="r")
            for lo in range(0, rows, chunk_rows):
                hi = min(rows, lo + chunk_rows)
                ids = np.arange(seg["id_start"] + lo, seg["id_start"] + hi, dtype=np.int64)
                keep = ~np.isin(ids, deleted) if deleted.size else np.ones(hi - lo, dtype=bool)
                if row_mask is not None:
                    keep &= row_mask[offset + lo : offset + hi]
                if keep.all():
                    yield ids, vectors[lo:hi]
                elif keep.any():
                    yield ids[keep], vectors[lo:hi][keep]
            offset += rows

    def load_vectors(self) -> tuple[np.ndarray, list[StoredItem]]:
        """All live vectors (float32, in memory) and their items, for evaluation and training."""
        blocks, items = [], []
        for ids, block in self.iter_blocks():
            blocks.append(np.asarray(block, dtype=np.float32))
            items.extend(self.get(int(i)) for i in ids)
        vectors = np.concatenate(blocks) if blocks else np.zeros((0, self.dim), dtype=np.float32)
        return vectors, items

    # ----- writing ------------------------------------------------------------------------
    def _commit(self) -> None:
        write_json(self.root / MANIFEST, self._manifest)

    def append(
        self,
        vectors: np.ndarray,
        records: Sequence[CatalogRecord],
        failures: Sequence[dict[str, str]] = (),
    ) -> np.ndarray:
        """Add L2-normalised vectors and their records as a new segment; returns their ids."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {vectors.shape}")
        if len(records) != vectors.shape[0]:
            raise ValueError(f"{vectors.shape[0]} vectors but {len(records)} records")
        norms = np.linalg.norm(vectors.astype(np.float32), axis=1)
        if vectors.shape[0] and not np.allclose(norms, 1.0, atol=1e-2):
            raise ValueError("vectors must be L2-normalised (clothsim.encoders.base.l2_normalize)")
        name = f"{len(self._manifest['segments']):06d}"
        while (self.root / "segments" / f"{name}.npy").exists():  # an orphan of a crashed append
            name = f"{int(name) + 1:06d}"
        seg = {"name": name, "id_start": int(self._manifest["next_id"]), "rows": int(vectors.shape[0])}
        vec_path, meta_path = self._segment_paths(seg)
        write_jsonl(meta_path, (r.to_dict() for r in records))
        write_npy(vec_path, vectors.astype(self.dtype))
        self._manifest["segments"].append(seg)
        self._manifest["next_id"] = seg["id_start"] + seg["rows"]
        self._manifest.setdefault("failures", []).extend(dict(f) for f in failures)
        self._commit()
        self._items = self._by_id = None
        return np.arange(seg["id_start"], seg["id_start"] + seg["rows"], dtype=np.int64)

    def adopt_segment(self, vectors_file: Path, metadata_file: Path, rows: int) -> None:
        """Move already-written segment files in (used by extraction); commit with :meth:`commit`."""
        name = f"{len(self._manifest['segments']):06d}"
        seg = {"name": name, "id_start": int(self._manifest["next_id"]), "rows": int(rows)}
        vec_path, meta_path = self._segment_paths(seg)
        shutil.move(str(metadata_file), meta_path)
        shutil.move(str(vectors_file), vec_path)
        self._manifest["segments"].append(seg)
        self._manifest["next_id"] = seg["id_start"] + rows
        self._items = self._by_id = None

    def commit(self, **updates: Any) -> None:
        """Write the manifest (with ``updates`` merged in); the point at which changes become visible."""
        self._manifest.update(updates)
        self._commit()

    def delete(self, ids: Sequence[int] | np.ndarray) -> int:
        """Tombstone ``ids``; returns how many were live. Unknown ids raise ``KeyError``."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        known = np.isin(ids, self.all_ids())
        if not known.all():
            raise KeyError(f"unknown ids: {ids[~known][:10].tolist()}")
        newly = ids[~np.isin(ids, self.deleted_ids)]
        if newly.size:
            self._deleted = np.union1d(self.deleted_ids, newly)
            write_npy(self.root / "deleted.npy", self._deleted)
            self._commit()
        return int(newly.size)
