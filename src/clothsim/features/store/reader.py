"""Reading a feature store: opening, the memory-mapped vectors, row lookups, tombstones and the checks a
hit passes before it is served. A :class:`StoreReader` needs no writer lock and writes nothing; the
read-write :class:`~clothsim.features.store.FeatureStore` builds on it."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

import numpy as np

from clothsim.encoders.spec import fingerprint_mismatch
from clothsim.errors import StaleStoreError
from clothsim.features.row_checksums import mismatched_rows
from clothsim.features.store.format import (
    AUTO_VERIFY_BYTES,
    LEGACY_FORMAT,
    MANIFEST,
    NORM_TOLERANCE,
    SEGMENTS,
    Segment,
    StoredItem,
    StoreIntegrityError,
    StoreProblem,
    UnfinishedStoreError,
    _as_id,
    _load_manifest,
    NPY_ERRORS,
    _read_npy_header,
)
from clothsim.features.store.metadata import MetadataMixin
from clothsim.features.store.verify import VerifyMixin

_Reader = TypeVar("_Reader", bound="StoreReader")


class StoreReader(MetadataMixin, VerifyMixin):
    """A committed state of a store folder, read only; see :mod:`clothsim.features.store` for the layout
    and guarantees. Several readers (and one writer) may use the same folder at once."""

    def __init__(self, root: str | Path, manifest: dict[str, Any]) -> None:
        self.root = Path(root)
        self._manifest = manifest
        self._arrays: dict[str, np.ndarray] = {}
        self._rowsums: dict[str, np.ndarray] = {}
        self._verified: set[str] = set()  # segments whose files were checked whole by this object
        self._damage: StoreIntegrityError | None = None  # what a background check found
        self._tables: dict[str, Any] = {}
        self._category_columns: dict[str, Any] = {}
        self._row_groups: dict[tuple[str, int], Any] = {}
        self._group_starts: dict[str, np.ndarray] = {}
        self._reset_caches()

    # ----- opening ----------------------------------------------------------------------------------
    @classmethod
    def exists(cls, root: str | Path) -> bool:
        """Whether ``root`` holds a store (a manifest file; it may still turn out to be damaged)."""
        return (Path(root) / MANIFEST).is_file()


    @classmethod
    def open(
        cls: type[_Reader],
        root: str | Path,
        expect: dict[str, Any] | None = None,
        *,
        allow_unfinished: bool = False,
        verify: bool | str = "auto",
        check_files: bool = True,
    ) -> _Reader:
        """Open an existing store; with ``expect`` (an encoder fingerprint) refuse a stale one.

        Args:
            root: The store folder.
            expect: An encoder fingerprint the store must match.
            allow_unfinished: Open a store whose first build was interrupted (for the writer resuming it).
            verify: ``"auto"`` checksums stores up to :data:`AUTO_VERIFY_BYTES` (bigger ones get the cheap
                size and header checks only); ``True`` always; ``False`` never (sizes and headers still).
            check_files: ``False`` skips even the size and header checks (for the writer that repairs it).

        Raises:
            FileNotFoundError: ``root`` holds no store.
            StoreIntegrityError: the manifest or a data file is damaged (the message names the file).
            StaleStoreError: the store was made with another encoder setup, or by a newer clothsim.
            UnfinishedStoreError: a build or update was interrupted (and not ``allow_unfinished``).
        """
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            hint = ""
            if root.with_name(root.name + ".rebuild").is_dir():
                hint = ("; an `clothsim index --overwrite` into it was interrupted while swapping the rebuilt "
                        "index in: run the same command again to finish it")
            raise FileNotFoundError(f"{root} is not a clothsim feature store (no {MANIFEST}){hint}")
        manifest = _load_manifest(path, root)
        store = cls(root, manifest)
        if not check_files:
            return store
        store._check_files()
        sync = manifest.get("sync")
        if sync and sync.get("first_build") and not allow_unfinished:
            raise UnfinishedStoreError(
                f"{root} is an unfinished index: its first `clothsim index` was interrupted "
                f"({store.total_rows} of about {sync.get('planned_rows', '?')} images encoded); run the same "
                "command again to finish it")
        if sync and not sync.get("first_build") and not allow_unfinished:
            # Part old catalogue, part new: answering from it would be silently wrong, so it is refused
            # as an unfinished first build is (and `clothsim verify` says UNFINISHED).
            raise UnfinishedStoreError(
                f"{root}: an update by `clothsim index` was interrupted, and the index holds part of the new "
                "catalogue only; run the same `clothsim index` command again to finish it")
        if verify is True or (verify == "auto" and store._data_bytes() <= AUTO_VERIFY_BYTES):
            report = store.verify(full=True)
            if report.problems:
                first = report.problems[0]
                more = f" ({len(report.problems) - 1} more problems: `clothsim verify {root}`)" \
                    if len(report.problems) > 1 else ""
                raise StoreIntegrityError(first.path, first.message + more, root,
                                          repairable=first.kind != "manifest")
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
    def format_version(self) -> int:
        return int(self._manifest["format_version"])

    @property
    def is_legacy(self) -> bool:
        """A format-1 store (read as it is; converted by the first write)."""
        return self.format_version == LEGACY_FORMAT

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
    def failures(self) -> list[dict[str, Any]]:
        """Catalogue entries that could not be encoded: ``{"path", "reason"}`` (plus the file's signature)."""
        return [dict(f) for f in self._manifest.get("failures", [])]

    @property
    def sync_pending(self) -> dict[str, Any] | None:
        """The marker of a ``clothsim index`` run in progress or interrupted, else ``None``."""
        return self._manifest.get("sync")

    def __len__(self) -> int:
        return self.total_rows - len(self.deleted_ids)

    @property
    def total_rows(self) -> int:
        return int(self._offsets[-1])

    @property
    def segments(self) -> list[Segment]:
        """The committed segments, in id order."""
        return list(self._segment_list)

    def _segment(self, seg: dict[str, Any]) -> Segment:
        base = self.root / SEGMENTS / seg["name"]
        meta_suffix = ".jsonl" if self.is_legacy else ".parquet"
        return Segment(seg["name"], int(seg["id_start"]), int(seg["rows"]), base.with_suffix(".npy"),
                       base.with_suffix(meta_suffix))

    def _tombstone_path(self) -> Path | None:
        if self.is_legacy:
            path = self.root / "deleted.npy"
            return path if path.is_file() else None
        entry = self._manifest.get("tombstones")
        return self.root / SEGMENTS / f"{entry['name']}.deleted.npy" if entry else None

    def _data_bytes(self) -> int:
        if self.is_legacy:
            return sum(s.vectors_path.stat().st_size for s in self.segments if s.vectors_path.is_file())
        total = sum(int(s["vectors"]["bytes"]) + int(s["metadata"]["bytes"]) + int(s.get("rowsums", {}).get("bytes", 0))
                    for s in self._manifest["segments"])
        entry = self._manifest.get("tombstones")
        return total + (int(entry["bytes"]) if entry else 0)

    # ----- caches ------------------------------------------------------------------------------
    def _reset_caches(self) -> None:
        segs = self._manifest["segments"]
        self._starts = np.array([int(s["id_start"]) for s in segs], dtype=np.int64)
        self._rows = np.array([int(s["rows"]) for s in segs], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._rows)]).astype(np.int64)
        names = {s["name"] for s in segs}
        self._arrays = {n: a for n, a in self._arrays.items() if n in names}
        self._rowsums = {n: a for n, a in self._rowsums.items() if n in names}
        self._tables = {n: t for n, t in self._tables.items() if n in names}
        self._category_columns = {n: c for n, c in self._category_columns.items() if n in names}
        self._row_groups = {key: t for key, t in self._row_groups.items() if key[0] in names}
        self._group_starts = {n: g for n, g in self._group_starts.items() if n in names}
        # Built once per manifest: the hot paths (a search's hits, re-ranking) ask for it on every query.
        self._segment_list = [self._segment(seg) for seg in segs]
        self._all_ids: np.ndarray | None = None
        self._deleted: np.ndarray | None = None
        self._live: np.ndarray | None = None
        self._table: Any = None
        self._codes: tuple[np.ndarray, list[str]] | None = None

    def warm(self) -> None:
        """Load every lazily built cache now (metadata, category codes, tombstones), e.g. before serving
        requests from several threads, so that they only ever read them."""
        self.metadata_table()  # every segment's full table: hits are then looked up without reading files
        self.category_codes()
        self.live_mask()
        self.all_ids()

    # ----- cheap checks at open ----------------------------------------------------------------------
    def _check_files(self) -> None:
        """Sizes and headers of every data file (no data read); raises on the first problem."""
        for seg in self._manifest["segments"]:
            problem = self._check_segment_files(seg)
            if problem is not None:
                raise StoreIntegrityError(problem.path, problem.message, self.root)
        path = self._tombstone_path()
        if path is not None:
            self.deleted_ids  # noqa: B018 - loads and checks them

    def _check_segment_files(self, seg: dict[str, Any]) -> StoreProblem | None:
        segment = self._segment(seg)
        for path in (segment.vectors_path, segment.metadata_path):
            if not path.is_file():
                return StoreProblem(path, "is missing", "segment", segment.name)
        if not self.is_legacy:
            for key, path in (("vectors", segment.vectors_path), ("metadata", segment.metadata_path)):
                size = path.stat().st_size
                if size != int(seg[key]["bytes"]):
                    return StoreProblem(path, f"is {size} bytes, the manifest says {seg[key]['bytes']} "
                                              "(cut short or overwritten)", "segment", segment.name)
            with open(segment.metadata_path, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                if fh.read(4) != b"PAR1":
                    return StoreProblem(segment.metadata_path, "is not a Parquet file (no footer)", "segment",
                                        segment.name)
        try:
            self._array(segment)
            if "rowsums" in seg:
                self._segment_rowsums(segment)
        except StoreIntegrityError as exc:
            return StoreProblem(exc.path, exc.problem, "segment", segment.name)
        return None

    def _segment_rowsums(self, segment: Segment) -> np.ndarray:
        """A segment's row checksums, checked against the manifest's SHA-256 when first loaded (8 bytes a
        row: a few milliseconds at a million rows)."""
        cached = self._rowsums.get(segment.name)
        if cached is not None:
            return cached
        path = segment.rowsums_path
        entry = next(s for s in self._manifest["segments"] if s["name"] == segment.name)["rowsums"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreIntegrityError(path, "is missing", self.root) from None
        except OSError as exc:
            raise StoreIntegrityError(path, f"cannot be read ({exc.strerror or exc})", self.root) from None
        if len(data) != int(entry["bytes"]) or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise StoreIntegrityError(path, "does not match its size or checksum in the manifest (damaged)", self.root)
        sums = np.load(io.BytesIO(data), allow_pickle=False)
        if sums.shape != (segment.rows,) or sums.dtype != np.uint64:
            raise StoreIntegrityError(path, f"holds {sums.dtype} of shape {sums.shape}, not {segment.rows} row "
                                            "checksums", self.root)
        sums.flags.writeable = False
        self._rowsums[segment.name] = sums
        return sums

    def _array(self, segment: Segment) -> np.ndarray:
        """The segment's vectors, memory-mapped (checked against the manifest on first use)."""
        cached = self._arrays.get(segment.name)
        if cached is not None:
            return cached
        path = segment.vectors_path
        try:
            shape, dtype, fortran, offset = _read_npy_header(path)
        except (ValueError, OSError) as exc:
            raise StoreIntegrityError(path, f"is not a readable .npy file ({exc})", self.root) from None
        expected = (segment.rows, self.dim)
        if tuple(shape) != expected or dtype != np.dtype(self.dtype) or fortran:
            raise StoreIntegrityError(path, f"holds a {dtype} array of shape {tuple(shape)}, the manifest says "
                                            f"{self.dtype} {expected}", self.root)
        size = path.stat().st_size
        if size != offset + segment.rows * self.dim * dtype.itemsize:
            raise StoreIntegrityError(path, f"is {size} bytes, its header needs "
                                            f"{offset + segment.rows * self.dim * dtype.itemsize}", self.root)
        if segment.rows == 0:
            array = np.zeros(expected, dtype=dtype)
        else:
            array = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=expected)
        self._arrays[segment.name] = array
        return array

    # ----- reading ------------------------------------------------------------------------
    @property
    def deleted_ids(self) -> np.ndarray:
        """Tombstoned ids, ascending (read-only array)."""
        if self._deleted is None:
            path = self._tombstone_path()
            deleted = np.zeros(0, dtype=np.int64)
            if path is not None:
                deleted = self._load_tombstones(path)
            deleted.flags.writeable = False
            self._deleted = deleted
        return self._deleted

    def _load_tombstones(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise StoreIntegrityError(path, "is missing", self.root)
        entry = self._manifest.get("tombstones") or {}
        if not self.is_legacy and path.stat().st_size != int(entry["bytes"]):
            raise StoreIntegrityError(path, f"is {path.stat().st_size} bytes, the manifest says {entry['bytes']}",
                                      self.root)
        data = path.read_bytes()
        # Always checked whole (8 bytes a deleted id): a damaged list would serve deleted items again.
        if not self.is_legacy and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise StoreIntegrityError(path, "does not match its checksum (damaged)", self.root)
        try:
            deleted = np.load(io.BytesIO(data), allow_pickle=False)
        except NPY_ERRORS as exc:
            raise StoreIntegrityError(path, f"is not a readable .npy file ({exc})", self.root) from None
        if deleted.ndim != 1 or deleted.dtype.kind not in "iu":
            raise StoreIntegrityError(path, f"holds {deleted.dtype} of shape {deleted.shape}, not a list of ids",
                                      self.root)
        deleted = deleted.astype(np.int64)
        if deleted.size and (np.any(np.diff(deleted) <= 0) or not self._known(deleted).all()):
            raise StoreIntegrityError(path, "holds ids that are unsorted, repeated or not in the store", self.root)
        return deleted

    def _known(self, ids: np.ndarray) -> np.ndarray:
        """Which ``ids`` name a row of some segment (deleted or not)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not self._starts.size:
            return np.zeros(ids.shape, dtype=bool)
        seg = np.searchsorted(self._starts, ids, side="right") - 1
        seg_c = np.clip(seg, 0, None)
        return (seg >= 0) & (ids - self._starts[seg_c] < self._rows[seg_c])

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions (over :meth:`all_ids`) of known ids; ``KeyError`` for any unknown one."""
        ids = np.asarray(ids, dtype=np.int64)
        known = self._known(ids)
        if not known.all():
            raise KeyError(f"no item with id {int(ids[~known][0])} in {self.root}")
        seg = np.searchsorted(self._starts, ids, side="right") - 1
        return self._offsets[seg] + (ids - self._starts[seg])

    def all_ids(self) -> np.ndarray:
        """Ids of every row, deleted ones included, ascending (read-only array)."""
        if self._all_ids is None:
            parts = [np.arange(s, s + n, dtype=np.int64) for s, n in zip(self._starts, self._rows)]
            ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            ids.flags.writeable = False
            self._all_ids = ids
        return self._all_ids

    def live_mask(self) -> np.ndarray:
        """``True`` for every row of :meth:`all_ids` that is not deleted (read-only array)."""
        if self._live is None:
            live = np.ones(self.total_rows, dtype=bool)
            if self.deleted_ids.size:
                live[self._positions(self.deleted_ids)] = False
            live.flags.writeable = False
            self._live = live
        return self._live

    def live_ids(self) -> np.ndarray:
        return self.all_ids()[self.live_mask()]


    # ----- rows and vectors -----------------------------------------------------------------------
    def get(self, item_id: int) -> StoredItem:
        """The record stored under ``item_id``; ``KeyError`` if unknown or deleted."""
        item_id = _as_id(item_id, self.root)
        return StoredItem(item_id, self.records_for([item_id])[0])

    def vector(self, item_id: int) -> np.ndarray:
        """The stored vector of one live item, as float32."""
        position = int(self._positions(np.array([_as_id(item_id, self.root)]))[0])
        if not self.live_mask()[position]:
            raise KeyError(f"no item with id {item_id} in {self.root}")
        seg = int(np.searchsorted(self._offsets, position, side="right") - 1)
        array = self._array(self.segments[seg])
        return np.asarray(array[position - self._offsets[seg]], dtype=np.float32)

    def vectors_for(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Float32 vectors of ``ids`` (any rows, deleted ones included), in the order given.

        Reads only the rows asked for, from the memory-mapped segments: for re-ranking a few hundred
        candidates without touching the rest of the store. ``KeyError`` for an unknown id.
        """
        ids = np.asarray(ids, dtype=np.int64).ravel()
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        if not ids.size:
            return out
        positions = self._positions(ids)
        segs = np.searchsorted(self._offsets, positions, side="right") - 1
        # Grouped by segment with one sort (a shortlist touches many segments, a few rows each); read
        # through a plain ndarray view, as np.memmap's Python-level __getitem__ costs more than the rows.
        order = np.argsort(segs, kind="stable")
        bounds = np.flatnonzero(np.diff(segs[order])) + 1
        for group in np.split(order, bounds):
            seg = int(segs[group[0]])
            out[group] = self._array(self._segment_list[seg]).view(np.ndarray)[positions[group] - self._offsets[seg]]
        return out

    def check_rows(self, ids: Sequence[int] | np.ndarray) -> None:
        """Check the stored vectors of ``ids`` (a search's hits) before they are served: each must be a
        finite unit vector. Cheap (a few rows); every backend's hits pass here.

        Raises:
            StoreIntegrityError: a row is damaged (the message names its segment file and the repair).
            KeyError: an unknown id.
        """
        if self._damage is not None:  # found by a background check: nothing more is served
            raise self._damage
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if not ids.size:
            return
        positions = self._positions(ids)
        segs = np.searchsorted(self._offsets, positions, side="right") - 1
        for seg in np.unique(segs):
            segment = self._segment_list[int(seg)]
            local = positions[segs == seg] - self._offsets[seg]
            entry = self._manifest["segments"][int(seg)] if not self.is_legacy else {}
            if "rowsums" in entry:
                bad = mismatched_rows(self._array(segment), local, self._segment_rowsums(segment))
                if bad.size:
                    raise StoreIntegrityError(segment.vectors_path, f"row {int(bad[0])} (item "
                                              f"{int(bad[0]) + segment.id_start}) does not match its checksum "
                                              "(damaged)", self.root)
            elif not self.is_legacy and segment.name not in self._verified:
                self._verify_whole_segment(entry, segment)  # format 2: the segment once, then trusted
            else:
                vectors = np.asarray(self._array(segment)[local], dtype=np.float32)
                norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
                bad = ~(np.abs(norms - 1.0) <= NORM_TOLERANCE)
                if bad.any():
                    raise StoreIntegrityError(segment.vectors_path, f"holds a damaged vector for item "
                                              f"{int(local[bad][0]) + segment.id_start} (norm "
                                              f"{float(norms[bad][0]):.3g}, not a unit vector)", self.root)


    def _segment_of(self, item_id: int) -> Segment:
        position = int(self._positions(np.array([item_id]))[0])
        return self._segment_list[int(np.searchsorted(self._offsets, position, side="right") - 1)]

    def iter_segments(self) -> Iterator[tuple[Segment, np.ndarray, slice]]:
        """``(segment, vectors, positions)`` per segment: its memory-mapped vectors and the slice of
        :meth:`all_ids` positions it covers (index :meth:`live_mask` or a filter with it)."""
        for i, segment in enumerate(self.segments):
            yield segment, self._array(segment), slice(int(self._offsets[i]), int(self._offsets[i + 1]))

    def iter_blocks(
        self, chunk_rows: int = 16384, row_mask: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids, vectors)`` blocks of live rows from memory-mapped segments.

        Args:
            chunk_rows: Most rows per block (bounds memory).
            row_mask: Optional boolean array over :meth:`all_ids` positions; ``False`` rows are skipped.
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        live = self.live_mask()
        if row_mask is not None:
            row_mask = np.asarray(row_mask, dtype=bool)
            if row_mask.shape != live.shape:
                raise ValueError(f"row_mask must have one entry per row ({live.shape[0]}), got {row_mask.shape}")
            live = live & row_mask
        for segment, vectors, positions in self.iter_segments():
            for lo in range(0, segment.rows, chunk_rows):
                hi = min(segment.rows, lo + chunk_rows)
                keep = live[positions.start + lo : positions.start + hi]
                ids = np.arange(segment.id_start + lo, segment.id_start + hi, dtype=np.int64)
                if keep.all():
                    yield ids, vectors[lo:hi]
                elif keep.any():
                    yield ids[keep], vectors[lo:hi][keep]

