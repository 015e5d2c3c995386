"""The feature store: L2-normalised vectors aligned row by row with columnar catalogue metadata.

Layout of a store directory (format 3)::

    manifest.json                the commit record: fingerprint, dtype, segments with sizes and SHA-256,
                                 tombstones, failures, an in-progress sync marker; checksummed itself
    segments/NNNNNN.npy          (rows, dim) float32 or float16 vectors, memory-mapped when read
    segments/NNNNNN.rowsums.npy  one XXH3-64 checksum per vector row (clothsim.features.row_checksums)
    segments/NNNNNN.parquet      one metadata row per vector, same order (path, category, split, item_id,
                                 attributes, bbox, and the source file's size and mtime for syncing), with
                                 a CRC per page, checked whenever a page is read
    segments/NNNNNN.deleted.npy  ids removed since (tombstones), ascending
    backends/<name>/             files an index backend keeps beside the store

Ids are integers handed out in order and never reused; segment ``s`` holds ids
``id_start .. id_start + rows - 1``. Crash safety works as in SQLite or LMDB: data files are never
changed once written; a change writes *new* files under fresh names, flushes them, and then replaces
``manifest.json`` in one atomic rename. A reader therefore sees the previous state or the next one,
never a mix, and files a crash left unreferenced are removed by the next writer. One writer at a time
(:mod:`clothsim.features.writer_lock`); readers need no lock.

Integrity: the manifest records every data file's size and checksum. Opening checks sizes and headers
(cheap, always), the small files' checksums (manifest, row checksums, tombstones) and, for stores up to
:data:`AUTO_VERIFY_BYTES`, every checksum; :meth:`FeatureStore.verify` checks everything (also in a
thread: :meth:`FeatureStore.verify_in_background`). Bigger stores never serve a damaged row either: every
search's hits pass :meth:`FeatureStore.check_rows` (each row against its own checksum), a scan refuses
scores no unit vector can give, and metadata pages are checked as they are read. Damage raises
:class:`StoreIntegrityError`, naming the file and how to repair. Vectors that are not finite unit vectors
are refused when written.

Stores of format 1 (JSON-lines metadata, no checksums) and 2 (no row checksums) still open and are read
as they are (a format-2 store over :data:`AUTO_VERIFY_BYTES` checks a hit's whole segment the first time
one of its rows is returned); the first write converts them to format 3 in one commit.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import re
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from clothsim import __version__
from clothsim.data.records import CatalogRecord
from clothsim.encoders.spec import fingerprint_mismatch
from clothsim.errors import ClothsimError, StaleStoreError, UsageError
from clothsim.features.row_checksums import ALGORITHM as ROWSUM_ALGORITHM
from clothsim.features.row_checksums import mismatched_rows, row_checksums
from clothsim.features.writer_lock import StoreBusyError, WriterLock  # noqa: F401  (StoreBusyError: re-exported)
from clothsim.fileio import (
    FileDigest,
    file_digest,
    read_jsonl,
    remove_path,
    write_bytes,
    write_npy,
    write_npy_parts,
    write_parquet,
)

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SEGMENTS = "segments"
BACKENDS = "backends"
FORMAT_VERSION = 3
LEGACY_FORMAT = 1
#: Format 2: checksummed files, no row checksums (read as it is; the first write converts it).
ROWLESS_FORMAT = 2
DTYPES = ("float32", "float16")
#: Stores with at most this many bytes of data files are checksummed in full every time they are opened.
AUTO_VERIFY_BYTES = 64 * 1024 * 1024
#: The category code of a row without a category (see :meth:`FeatureStore.category_codes`).
NO_CATEGORY = -1
#: How far a stored vector's norm may be from 1 (float16 rounding stays well inside).
NORM_TOLERANCE = 1e-2
#: Rows per Parquet row group: a hit's record is read with its row group only, not the whole segment.
ROW_GROUP_ROWS = 8192
#: Segments smaller than this are merged by :meth:`FeatureStore.compact` once there are enough of them.
COMPACT_ROWS = 65536
COMPACT_MIN_SMALL = 16
_LEFTOVER = re.compile(r"^\..*\.tmp$")


def _metadata_schema():
    import pyarrow as pa

    return pa.schema([
        ("path", pa.string()), ("category", pa.string()), ("split", pa.string()), ("item_id", pa.string()),
        ("attributes", pa.list_(pa.string())), ("bbox", pa.list_(pa.int64())),
        ("source_size", pa.int64()), ("source_mtime_ns", pa.int64()),
    ])


# ----- errors ------------------------------------------------------------------------------------------
class StoreIntegrityError(ClothsimError, RuntimeError):
    """A store is damaged. ``path`` is the file at fault; the message says what is wrong and how to repair.

    Damage to a segment or the tombstones is repaired by running ``clothsim index`` again (it re-encodes
    only what was lost); a damaged manifest needs ``clothsim index ... --overwrite``.
    """

    def __init__(self, path: str | Path, problem: str, root: str | Path | None = None,
                 repairable: bool = True) -> None:
        self.path = Path(path)
        self.problem = problem
        self.root = Path(root) if root is not None else self.path.parent
        self.repairable = repairable
        super().__init__(f"{self.path}: {problem}. {repair_hint(self.root, repairable)}")


class UnfinishedStoreError(ClothsimError, RuntimeError):
    """A ``clothsim index`` run (a first build or an update) was interrupted; running the same command
    again finishes it."""


def repair_hint(root: str | Path, repairable: bool = True) -> str:
    """How to repair a damaged store at ``root`` (one sentence, with the command)."""
    if repairable:
        return (f"Repair it with `clothsim index CATALOGUE --out {root}` (re-encodes only the damaged part) "
                "or rebuild it with --overwrite")
    return f"Rebuild it with `clothsim index CATALOGUE --out {root} --overwrite`"


# ----- small records ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredItem:
    """A catalogue record with the id it has in a store."""

    id: int
    record: CatalogRecord


@dataclass(frozen=True)
class Segment:
    """One segment as the manifest describes it, with the paths of its files."""

    name: str
    id_start: int
    rows: int
    vectors_path: Path
    metadata_path: Path

    @property
    def rowsums_path(self) -> Path:
        """Its row checksums (format 3)."""
        return self.vectors_path.with_name(f"{self.name}.rowsums.npy")


@dataclass(frozen=True)
class StoreProblem:
    """One finding of :meth:`FeatureStore.verify`: the file, what is wrong, and which part it damages."""

    path: Path
    message: str
    kind: str  # "segment", "tombstones" or "manifest"
    segment: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class VerifyReport:
    """What :meth:`FeatureStore.verify` found. ``ok`` when there are no problems (leftovers are harmless)."""

    root: Path
    format_version: int
    segments: int
    rows: int
    live: int
    bytes_checked: int
    checksums: bool
    problems: list[StoreProblem] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def file_signature(path: str | Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of the file ``path`` names (following links), or ``None`` if it has none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def check_unit_vectors(vectors: np.ndarray, what: str = "vectors") -> None:
    """Refuse rows that are not finite or whose norm is far from 1.

    Raises:
        ValueError: naming how many rows are bad and the first of them.
    """
    bad_rows: list[int] = []
    first_norm = None
    for lo in range(0, vectors.shape[0], 65536):
        block = np.asarray(vectors[lo : lo + 65536], dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        bad = ~np.isfinite(norms) | (np.abs(norms - 1.0) > NORM_TOLERANCE)
        if bad.any():
            idx = np.flatnonzero(bad)
            if first_norm is None:
                first_norm = float(norms[idx[0]])
            bad_rows.extend((idx + lo).tolist())
    if bad_rows:
        raise ValueError(f"{len(bad_rows)} of {vectors.shape[0]} {what} are not finite unit vectors (first: row "
                         f"{bad_rows[0]}, norm {first_norm}); vectors must be L2-normalised "
                         "(clothsim.encoders.base.l2_normalize)")


def _as_id(item_id: Any, root: Path) -> int:
    """An id as a Python int; ``KeyError`` for what cannot be one (ids are non-negative int64)."""
    value = int(item_id)
    if not 0 <= value < 2**63:
        raise KeyError(f"no item with id {value} in {root}")
    return value


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _record_columns(records: Sequence[CatalogRecord], sources: Sequence[tuple[int, int] | None]) -> Any:
    import pyarrow as pa

    return pa.table({
        "path": [r.path for r in records],
        "category": [r.category for r in records],
        "split": [r.split for r in records],
        "item_id": [r.item_id for r in records],
        "attributes": [list(r.attributes) for r in records],
        "bbox": [list(r.bbox) if r.bbox is not None else None for r in records],
        "source_size": [s[0] if s else None for s in sources],
        "source_mtime_ns": [s[1] if s else None for s in sources],
    }, schema=_metadata_schema())


def _table_rows(table: Any, rows: np.ndarray) -> list[dict[str, Any]]:
    """Rows of an Arrow table as dicts. A search's hits are a row or two per table: slicing a row
    costs a third of ``take`` (17 against 47 us measured), which pays only for many rows."""
    if rows.size > 8:
        return table.take(rows).to_pylist()
    return [table.slice(int(r), 1).to_pylist()[0] for r in rows]


def _row_to_record(row: dict[str, Any]) -> CatalogRecord:
    bbox = row.get("bbox")
    return CatalogRecord(path=row["path"], category=row["category"], split=row.get("split"),
                         item_id=row.get("item_id"), attributes=tuple(row.get("attributes") or ()),
                         bbox=tuple(int(v) for v in bbox) if bbox is not None else None)  # type: ignore[arg-type]


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        return shape, dtype, fortran, fh.tell()


# ----- the store ---------------------------------------------------------------------------------------
class FeatureStore:
    """A directory of vectors and metadata; see the module docstring for the layout and guarantees."""

    def __init__(self, root: str | Path, manifest: dict[str, Any]) -> None:
        self.root = Path(root)
        self._manifest = manifest
        self._lock = WriterLock(self.root)
        self._txn_depth = 0
        self._txn_files: list[Path] = []
        self._gc_done = False
        self._arrays: dict[str, np.ndarray] = {}
        self._rowsums: dict[str, np.ndarray] = {}
        self._verified: set[str] = set()  # segments whose files were checked whole by this object
        self._damage: StoreIntegrityError | None = None  # what a background check found
        self._tables: dict[str, Any] = {}
        self._category_columns: dict[str, Any] = {}
        self._row_groups: dict[tuple[str, int], Any] = {}
        self._group_starts: dict[str, np.ndarray] = {}
        self._reset_caches()

    # ----- opening and creating -------------------------------------------------------------
    @classmethod
    def exists(cls, root: str | Path) -> bool:
        """Whether ``root`` holds a store (a manifest file; it may still turn out to be damaged)."""
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
        try:
            dim = int(fingerprint["dim"])
        except (KeyError, TypeError, ValueError):
            dim = 0
        if dim < 1:
            raise ValueError(f"the fingerprint needs a positive integer 'dim', got {fingerprint.get('dim')!r}")
        root = Path(root)
        if cls.exists(root):
            raise FileExistsError(f"{root} already holds a feature store; open it or choose another folder")
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest = {
            "format_version": FORMAT_VERSION,
            "clothsim_version": __version__,
            "fingerprint": json.loads(json.dumps({**fingerprint, "dim": dim})),
            "dtype": dtype,
            "segments": [],
            "tombstones": None,
            "next_id": 0,
            "next_file": 0,
            "failures": [],
            "sync": None,
            "generation": 0,
            "created": now,
            **(extra or {}),
        }
        (root / SEGMENTS).mkdir(parents=True, exist_ok=True)
        store = cls(root, manifest)
        with store._writing():
            store._collect_garbage()  # files a crashed earlier build left behind
            store._write_manifest()
        return store

    @classmethod
    def open(
        cls,
        root: str | Path,
        expect: dict[str, Any] | None = None,
        *,
        allow_unfinished: bool = False,
        verify: bool | str = "auto",
        check_files: bool = True,
    ) -> "FeatureStore":
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
        except (ValueError, OSError, SyntaxError, EOFError) as exc:
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
        except (ValueError, OSError, EOFError) as exc:
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

    def metadata_table(self) -> Any:
        """Every row's metadata (deleted ones included) as one pyarrow Table, in :meth:`all_ids` order."""
        if self._table is None:
            import pyarrow as pa

            tables = [self._segment_table(self._segment(seg)) for seg in self._manifest["segments"]]
            self._table = pa.concat_tables(tables) if tables else _metadata_schema().empty_table()
        return self._table

    def _segment_table(self, segment: Segment) -> Any:
        cached = self._tables.get(segment.name)
        if cached is not None:
            return cached
        import pyarrow.parquet as pq

        path = segment.metadata_path

        def read() -> Any:
            if self.is_legacy:
                records = [CatalogRecord.from_dict(r) for r in read_jsonl(path)]
                return _record_columns(records, [None] * len(records))
            # ParquetFile, not read_table: the latter goes through pyarrow.dataset, whose import alone
            # costs more than a whole search.
            return pq.ParquetFile(path, page_checksum_verification=True).read().cast(_metadata_schema())

        table = self._checked_metadata(segment, read)
        if table.column("path").null_count:
            raise StoreIntegrityError(path, "has rows without a path", self.root)
        self._tables[segment.name] = table
        return table

    def category_codes(self) -> tuple[np.ndarray, list[str]]:
        """``(codes, categories)``: for every row of :meth:`all_ids` (deleted included) the index of its
        category in the sorted ``categories`` list, as int32, and :data:`NO_CATEGORY` for a row without
        one (a catalogue without categories). What backends filter and count with."""
        if self._codes is None:
            import pyarrow as pa
            import pyarrow.compute as pc

            chunks = [self._segment_categories(self._segment(seg)) for seg in self._manifest["segments"]]
            column = pa.chunked_array(chunks, type=pa.string())
            categories = sorted(str(v) for v in pc.unique(column).to_pylist() if v is not None)
            codes = pc.fill_null(pc.index_in(column, value_set=pa.array(categories, type=column.type)), NO_CATEGORY)
            array = codes.to_numpy(zero_copy_only=False).astype(np.int32) if len(column) else np.zeros(0, np.int32)
            array.flags.writeable = False
            self._codes = (array, categories)
        codes, names = self._codes
        return codes, list(names)

    def records_for(self, ids: Sequence[int] | np.ndarray) -> list[CatalogRecord]:
        """The records of live ``ids``, in the order given (for the hits a search returns).

        Raises:
            KeyError: an id is unknown or deleted.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return []
        positions = self._positions(ids)
        dead = ~self.live_mask()[positions]
        if dead.any():
            raise KeyError(f"no item with id {int(ids[dead][0])} in {self.root}")
        seg_of = np.searchsorted(self._offsets, positions, side="right") - 1
        records: list[CatalogRecord | None] = [None] * ids.size
        segments = self.segments
        for seg in np.unique(seg_of):
            where = np.flatnonzero(seg_of == seg)
            rows = self._segment_rows(segments[seg], positions[where] - self._offsets[seg])
            for w, row in zip(where, rows):
                records[w] = _row_to_record(row)
        return records  # type: ignore[return-value]

    def _segment_categories(self, segment: Segment) -> Any:
        """One segment's category column alone (what filters and counts need), read once."""
        cached = self._category_columns.get(segment.name)
        if cached is None:
            table = self._tables.get(segment.name)
            if table is None and not self.is_legacy:
                table = self._read_parquet(segment, columns=["category"])
            elif table is None:
                table = self._segment_table(segment)
            cached = table.column("category").combine_chunks()
            self._category_columns[segment.name] = cached
        return cached

    def _segment_rows(self, segment: Segment, local: np.ndarray) -> list[dict[str, Any]]:
        """Rows ``local`` of one segment as dicts, reading only the row groups that hold them."""
        table = self._tables.get(segment.name)
        if table is not None or self.is_legacy:
            return _table_rows(table if table is not None else self._segment_table(segment), local)
        starts = self._row_group_starts(segment)
        groups = np.searchsorted(starts, local, side="right") - 1
        out: list[dict[str, Any] | None] = [None] * local.size
        for g in np.unique(groups):
            key = (segment.name, int(g))
            part = self._row_groups.get(key)
            if part is None:
                part = self._read_parquet(segment, row_group=int(g))
                self._row_groups[key] = part
            where = np.flatnonzero(groups == g)
            for w, row in zip(where, _table_rows(part, local[where] - starts[g])):
                out[w] = row
        return out  # type: ignore[return-value]

    def _row_group_starts(self, segment: Segment) -> np.ndarray:
        """First row of each row group of a segment's Parquet file (and its end), read once per segment."""
        cached = self._group_starts.get(segment.name)
        if cached is not None:
            return cached
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(segment.metadata_path).metadata
            sizes = np.array([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], dtype=np.int64)
        except (OSError, pa.ArrowException) as exc:
            raise StoreIntegrityError(segment.metadata_path, f"cannot be read as metadata ({type(exc).__name__}: "
                                      f"{str(exc)[:200]})", self.root) from None
        if int(sizes.sum()) != segment.rows:
            raise StoreIntegrityError(segment.metadata_path, f"has {int(sizes.sum())} metadata rows, the manifest "
                                      f"says {segment.rows}", self.root)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self._group_starts[segment.name] = starts
        return starts

    def _read_parquet(self, segment: Segment, columns: list[str] | None = None, row_group: int | None = None) -> Any:
        import pyarrow.parquet as pq

        path = segment.metadata_path
        if row_group is not None:
            def read_group() -> Any:
                group = pq.ParquetFile(path, page_checksum_verification=True).read_row_group(row_group, columns=columns)
                return group.cast(_metadata_schema()) if columns is None else group

            # One row group of a segment: its row count is the group's, not the manifest's.
            return self._checked_metadata(segment, read_group, whole=False)
        table = self._checked_metadata(
            segment, lambda: pq.ParquetFile(path, page_checksum_verification=True).read(columns=columns))
        if "path" in table.column_names and table.column("path").null_count:
            raise StoreIntegrityError(path, "has rows without a path", self.root)
        return table

    def _checked_metadata(self, segment: Segment, read: Callable[[], Any], whole: bool = True) -> Any:
        """``read()`` of a segment's metadata, any failure (and, for the whole segment, a row count other
        than the manifest's) raised as :class:`StoreIntegrityError` naming the file."""
        import pyarrow as pa

        path = segment.metadata_path
        try:
            table = read()
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            raise StoreIntegrityError(path, f"cannot be read as metadata ({type(exc).__name__}: "
                                            f"{str(exc)[:200]})", self.root) from None
        if whole and table.num_rows != segment.rows:
            raise StoreIntegrityError(path, f"has {table.num_rows} metadata rows, the manifest says {segment.rows}",
                                      self.root)
        return table

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

    def _verify_whole_segment(self, entry: dict[str, Any], segment: Segment) -> None:
        problems, _ = self._verify_segment(entry, segment)
        if problems:
            raise StoreIntegrityError(problems[0].path, problems[0].message, self.root)

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

    def items(self) -> list[StoredItem]:
        """Every stored record with its id, deleted ones included, in id order (builds Python objects for
        every row: for small stores and tests; use the columnar accessors elsewhere)."""
        rows = self.metadata_table().to_pylist()
        return [StoredItem(int(i), _row_to_record(r)) for i, r in zip(self.all_ids(), rows)]

    def load_vectors(self) -> tuple[np.ndarray, list[StoredItem]]:
        """All live vectors (float32, in memory) and their items, for evaluation and training."""
        blocks, ids = [], []
        for block_ids, block in self.iter_blocks():
            blocks.append(np.asarray(block, dtype=np.float32))
            ids.append(block_ids)
        vectors = np.concatenate(blocks) if blocks else np.zeros((0, self.dim), dtype=np.float32)
        all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        records = self.records_for(all_ids)
        return vectors, [StoredItem(int(i), r) for i, r in zip(all_ids, records)]

    def source_signatures(self) -> tuple[np.ndarray, np.ndarray]:
        """``(size, mtime_ns)`` of every row's source file when it was encoded (-1 where unknown)."""
        table = self.metadata_table()
        size = table.column("source_size").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        mtime = table.column("source_mtime_ns").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        return size, mtime

    # ----- verification ---------------------------------------------------------------------------
    def verify(self, full: bool = True, threads: int = 2) -> VerifyReport:
        """Check every data file: sizes and headers, and with ``full`` checksums (format 2) or every vector's
        norm (format 1, which has no checksums), and that metadata reads back. Never raises for damage:
        the report lists each problem with its file."""
        started = time.perf_counter()
        report = VerifyReport(self.root, self.format_version, len(self._manifest["segments"]), self.total_rows,
                              0, 0, checksums=not self.is_legacy)
        jobs: list[tuple[dict[str, Any], Segment]] = []
        for seg in self._manifest["segments"]:
            problem = self._check_segment_files(seg)
            if problem is not None:
                report.problems.append(problem)
            else:
                jobs.append((seg, self._segment(seg)))
        if full and jobs:
            with ThreadPoolExecutor(max(1, threads)) as pool:  # hashlib releases the GIL on big blocks
                for problems, nbytes in pool.map(lambda job: self._verify_segment(*job), jobs):
                    report.problems.extend(problems)
                    report.bytes_checked += nbytes
        tomb = self._tombstone_path()
        self._deleted, self._live = None, None
        report.live = report.rows
        if tomb is not None:
            try:
                if full and not self.is_legacy and tomb.is_file():
                    digest = file_digest(tomb)
                    report.bytes_checked += digest.bytes
                    if digest.sha256 != self._manifest["tombstones"]["sha256"]:
                        raise StoreIntegrityError(tomb, "does not match its checksum (damaged)", self.root)
                report.live = len(self)
            except StoreIntegrityError as exc:
                report.problems.append(StoreProblem(exc.path, exc.problem, "tombstones"))
            finally:
                self._deleted, self._live = None, None
        report.leftovers = self._leftovers()
        report.seconds = time.perf_counter() - started
        return report

    def verify_in_background(self, threads: int = 2) -> "BackgroundVerify":
        """Start a full :meth:`verify` in a thread and return at once (``clothsim serve`` over a store too big
        to hash at every open). Meanwhile every hit is checked on its own (:meth:`check_rows`); once the
        check finds damage, :meth:`check_rows` raises it for every later search, so nothing more is served.
        """
        return BackgroundVerify(self, threads)

    def _verify_segment(self, seg: dict[str, Any], segment: Segment) -> tuple[list[StoreProblem], int]:
        problems: list[StoreProblem] = []
        nbytes = 0
        if not self.is_legacy:
            files = [("vectors", segment.vectors_path), ("metadata", segment.metadata_path)]
            if "rowsums" in seg:
                files.append(("rowsums", segment.rowsums_path))
            for key, path in files:
                digest = file_digest(path)
                nbytes += digest.bytes
                if digest.sha256 != seg[key]["sha256"]:
                    problems.append(StoreProblem(path, "does not match its checksum (damaged or changed since "
                                                       "it was written)", "segment", segment.name))
            if problems:
                return problems, nbytes
        else:
            # No checksums in format 1: the next best thing is that every vector is a finite unit vector.
            array = self._array(segment)
            nbytes += array.nbytes
            try:
                check_unit_vectors(array, what=f"vectors of {segment.vectors_path.name}")
            except ValueError as exc:
                problems.append(StoreProblem(segment.vectors_path, str(exc).split(";")[0], "segment", segment.name))
        try:
            self._tables.pop(segment.name, None)
            self._segment_table(segment)
        except StoreIntegrityError as exc:
            problems.append(StoreProblem(exc.path, exc.problem, "segment", segment.name))
        if not problems:
            self._verified.add(segment.name)
        return problems, nbytes

    def _leftovers(self) -> list[Path]:
        """Files a crash left behind that the manifest does not reference (removed by the next write)."""
        keep = set()
        for seg, segment in zip(self._manifest["segments"], self.segments):
            keep.update({segment.vectors_path.name, segment.metadata_path.name})
            if "rowsums" in seg:
                keep.add(segment.rowsums_path.name)
        tomb = self._tombstone_path()
        if tomb is not None and tomb.parent.name == SEGMENTS:
            keep.add(tomb.name)
        found: list[Path] = []
        seg_dir = self.root / SEGMENTS
        if seg_dir.is_dir():
            found.extend(p for p in sorted(seg_dir.iterdir()) if p.name not in keep)
        if self.root.is_dir():
            for p in sorted(self.root.iterdir()):
                legacy_leftover = p.name == "deleted.npy" and not self.is_legacy
                if _LEFTOVER.match(p.name) or p.name == "_extraction" or legacy_leftover:
                    found.append(p)
        return found

    # ----- writing: lock, transactions, commit ------------------------------------------------------
    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the index folder's writer lock (re-entrant within this object; see
        :mod:`clothsim.features.writer_lock`)."""
        self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    @contextmanager
    def writer(self) -> Iterator["FeatureStore"]:
        """Hold the writer lock across several transactions (e.g. a whole sync with its checkpoints)."""
        with self._writing():
            yield self

    @contextmanager
    def transaction(self) -> Iterator["FeatureStore"]:
        """Group changes into one commit: every file is written under a new name first, and the manifest
        is switched once at the end. On an exception nothing changes and the new files are removed."""
        with self._writing():
            outer = self._txn_depth == 0
            if outer:
                if not self._gc_done:
                    self._collect_garbage()
                snapshot = copy.deepcopy(self._manifest)
                self._txn_files = []
                if self.is_legacy:
                    self._upgrade_legacy(drop_damaged=False)
            self._txn_depth += 1
            try:
                yield self
                if outer and self.format_version == ROWLESS_FORMAT:
                    self._add_row_checksums()  # of the segments this commit keeps (a repair drops damaged ones)
            except BaseException:
                self._txn_depth -= 1
                if outer:
                    self._manifest = snapshot
                    self._reset_caches()
                    for path in self._txn_files:
                        try:
                            path.unlink()
                        except OSError:
                            pass  # removed by the next writer's clean-up
                    self._txn_files = []
                raise
            self._txn_depth -= 1
            if outer:
                self._write_manifest()
                self._txn_files = []
                self._reset_caches()
                self._collect_garbage()

    def _write_manifest(self) -> None:
        self._manifest["generation"] = int(self._manifest.get("generation", 0)) + 1
        self._manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._manifest["clothsim_version"] = __version__
        self._manifest.pop("manifest_sha256", None)
        self._manifest["manifest_sha256"] = hashlib.sha256(_canonical(self._manifest)).hexdigest()
        text = json.dumps(self._manifest, indent=1, sort_keys=True) + "\n"
        write_bytes(self.root / MANIFEST, text.encode("utf-8"))

    def _collect_garbage(self) -> None:
        """Remove what earlier crashes left behind (only files the manifest does not reference)."""
        for path in self._leftovers():
            logger.info("removing leftover %s", path)
            try:
                remove_path(path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # clean-up is optional: the next writer tries again
                logger.warning("could not remove leftover %s (%s); the next write tries again", path, exc)
                return
        self._gc_done = True

    def _new_name(self) -> str:
        name = f"{int(self._manifest.get('next_file', 0)):06d}"
        self._manifest["next_file"] = int(self._manifest.get("next_file", 0)) + 1
        return name

    def _stage_rowsums(self, name: str, sums: np.ndarray) -> dict[str, Any]:
        path = self.root / SEGMENTS / f"{name}.rowsums.npy"
        self._txn_files.append(path)
        return {**write_npy(path, np.asarray(sums, dtype=np.uint64)).to_dict(), "algorithm": ROWSUM_ALGORITHM}

    def _stage_segment(self, vectors: np.ndarray, table: Any) -> np.ndarray:
        """Write one new segment's files and add it to the manifest being built (inside a transaction)."""
        rows = int(vectors.shape[0])
        if table.num_rows != rows:
            raise ValueError(f"{rows} vectors but {table.num_rows} metadata rows")
        name = self._new_name()
        base = self.root / SEGMENTS / name
        self._txn_files.extend([base.with_suffix(".npy"), base.with_suffix(".parquet")])
        stored = np.ascontiguousarray(vectors, dtype=self.dtype)
        vec_digest = write_npy_parts(base.with_suffix(".npy"), [stored], (rows, self.dim), self.dtype)
        rowsums = self._stage_rowsums(name, row_checksums(stored))
        meta_digest = write_parquet(base.with_suffix(".parquet"), table, ROW_GROUP_ROWS)
        id_start = int(self._manifest["next_id"])
        self._manifest["segments"].append({"name": name, "id_start": id_start, "rows": int(rows),
                                           "vectors": vec_digest.to_dict(), "metadata": meta_digest.to_dict(),
                                           "rowsums": rowsums})
        self._manifest["next_id"] = id_start + int(rows)
        self._reset_caches()
        return np.arange(id_start, id_start + rows, dtype=np.int64)

    def _stage_tombstones(self, deleted: np.ndarray) -> None:
        if deleted.size == 0:
            self._manifest["tombstones"] = None
        else:
            name = self._new_name()
            path = self.root / SEGMENTS / f"{name}.deleted.npy"
            self._txn_files.append(path)
            digest: FileDigest = write_npy(path, np.asarray(deleted, dtype=np.int64))
            self._manifest["tombstones"] = {"name": name, "count": int(deleted.size), **digest.to_dict()}
        self._reset_caches()

    # ----- writing: the public operations ---------------------------------------------------------
    def append(
        self,
        vectors: np.ndarray,
        records: Sequence[CatalogRecord],
        failures: Sequence[dict[str, Any]] = (),
        *,
        sources: Sequence[tuple[int, int] | None] | None = None,
    ) -> np.ndarray:
        """Add L2-normalised vectors and their records as a new segment, in one commit; returns their ids.

        Args:
            vectors: ``(n, dim)`` finite unit vectors.
            records: One record per row.
            failures: Entries that could not be encoded (``{"path", "reason"}``), recorded in the same commit.
            sources: ``(size, mtime_ns)`` of each record's file when it was encoded (what a later sync
                compares with); taken from the files now when not given.

        Raises:
            ValueError: wrong shape, count, or vectors that are not finite unit vectors.
        """
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {vectors.shape}")
        if len(records) != vectors.shape[0]:
            raise ValueError(f"{vectors.shape[0]} vectors but {len(records)} records")
        check_unit_vectors(vectors)
        if sources is None:
            sources = [file_signature(r.path) for r in records]
        elif len(sources) != len(records):
            raise ValueError(f"{len(records)} records but {len(sources)} sources")
        with self.transaction():
            ids = (self._stage_segment(vectors, _record_columns(records, sources)) if vectors.shape[0]
                   else np.zeros(0, dtype=np.int64))
            if failures:
                self._manifest.setdefault("failures", []).extend(dict(f) for f in failures)
        return ids

    def append_rows_from(self, ids: np.ndarray, records: Sequence[CatalogRecord],
                         sources: Sequence[tuple[int, int] | None]) -> np.ndarray:
        """Append copies of stored rows' vectors (live or deleted) under new records, without encoding
        (a relabelled or re-added photo whose file did not change). Call inside a transaction or alone."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return np.zeros(0, dtype=np.int64)
        self.check_rows(ids)  # a copy gets checksums of its own: never of a damaged row
        positions = self._positions(ids)
        blocks = []
        for segment, array, span in self.iter_segments():
            inside = (positions >= span.start) & (positions < span.stop)
            if inside.any():
                blocks.append((np.flatnonzero(inside), np.asarray(array[positions[inside] - span.start])))
        vectors = np.zeros((ids.size, self.dim), dtype=self.dtype)
        for where, rows in blocks:
            vectors[where] = rows
        with self.transaction():
            return self._stage_segment(vectors, _record_columns(records, sources))

    def delete(self, ids: Sequence[int] | np.ndarray) -> int:
        """Tombstone ``ids`` in one commit; returns how many were live. Unknown ids raise ``KeyError``."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        known = self._known(ids)
        if not known.all():
            raise KeyError(f"unknown ids: {ids[~known][:10].tolist()}")
        newly = ids[~np.isin(ids, self.deleted_ids)]
        if newly.size:
            with self.transaction():
                self._stage_tombstones(np.union1d(self.deleted_ids, newly))
        return int(newly.size)

    def commit(self, **updates: Any) -> None:
        """Write the manifest (with ``updates`` merged in); the point at which changes become visible."""
        with self.transaction():
            self._manifest.update(json.loads(json.dumps(updates)))

    # ----- writing: maintenance --------------------------------------------------------------------
    def upgrade(self, drop_damaged: bool = False) -> list[StoreProblem]:
        """Convert a format-1 store to format 3 in one commit (no-op otherwise: a format-2 store is converted
        by its next transaction).

        With ``drop_damaged`` a segment that cannot be converted is left out (its rows are then missing,
        for a sync to re-encode) instead of failing; the problems found are returned.
        """
        if not self.is_legacy:
            return []
        with self._writing():
            problems = self._upgrade_legacy(drop_damaged=drop_damaged)
            self._write_manifest()
            self._reset_caches()
            self._collect_garbage()
        return problems

    def _upgrade_legacy(self, drop_damaged: bool) -> list[StoreProblem]:
        logger.info("%s: converting the store from format 1 (JSON lines) to format 3 (Parquet, checksums)",
                    self.root)
        old = copy.deepcopy(self._manifest)
        deleted = self.deleted_ids.copy()
        problems: list[StoreProblem] = []
        new_segments = []
        next_file = max([int(s["name"]) + 1 for s in old["segments"]] + [0])
        kept_ids: list[np.ndarray] = []
        for seg in old["segments"]:
            segment = self._segment(seg)
            try:
                array = self._array(segment)
                check_unit_vectors(array, what=f"vectors of {segment.vectors_path.name}")
                table = self._segment_table(segment)
                records = [_row_to_record(r) for r in table.to_pylist()]
                sources = [file_signature(r.path) for r in records]
            except (StoreIntegrityError, ValueError) as exc:
                problem = StoreProblem(getattr(exc, "path", segment.vectors_path), getattr(exc, "problem", str(exc)),
                                       "segment", segment.name)
                if not drop_damaged:
                    raise StoreIntegrityError(problem.path, problem.message, self.root) from None
                logger.warning("dropping damaged segment: %s", problem)
                problems.append(problem)
                continue
            # The .npy file stays where it is (never rewritten from now on); only its checksum is new.
            meta_path = segment.vectors_path.with_suffix(".parquet")
            self._txn_files.append(meta_path)
            meta = write_parquet(meta_path, _record_columns(records, sources), ROW_GROUP_ROWS)
            new_segments.append({"name": segment.name, "id_start": int(seg["id_start"]), "rows": int(seg["rows"]),
                                 "vectors": file_digest(segment.vectors_path).to_dict(), "metadata": meta.to_dict(),
                                 "rowsums": self._stage_rowsums(segment.name, row_checksums(array))})
            kept_ids.append(np.arange(int(seg["id_start"]), int(seg["id_start"]) + int(seg["rows"])))
        manifest = {k: v for k, v in old.items() if k != "segments"}
        manifest.update(format_version=FORMAT_VERSION, segments=new_segments, next_file=next_file, tombstones=None,
                        upgraded_from=LEGACY_FORMAT)
        manifest.setdefault("sync", None)
        if "source_hash" not in manifest:  # format 1 wrote it last: without it the first build never finished
            manifest["sync"] = {"first_build": True, "planned_rows": None, "base_next_id": int(old["next_id"]),
                                "base_segments": len(new_segments)}
        self._manifest = manifest
        self._arrays, self._tables = {}, {}
        self._reset_caches()
        alive = np.concatenate(kept_ids) if kept_ids else np.zeros(0, dtype=np.int64)
        self._stage_tombstones(np.intersect1d(deleted, alive))
        return problems

    def _add_row_checksums(self) -> None:
        """Convert a format-2 store to format 3 inside the transaction being built: row checksums for every
        segment, each computed only after its files were checked whole (damage is never given a checksum
        of its own; a damaged segment fails the transaction, and ``clothsim index`` repairs it first)."""
        logger.info("%s: adding row checksums (store format 2 to 3)", self.root)
        for seg in self._manifest["segments"]:
            segment = self._segment(seg)
            if "rowsums" in seg:
                continue
            if segment.name not in self._verified:
                problem = self._check_segment_files(seg)
                if problem is not None:
                    raise StoreIntegrityError(problem.path, problem.message, self.root)
                self._verify_whole_segment(seg, segment)
            seg["rowsums"] = self._stage_rowsums(segment.name, row_checksums(self._array(segment)))
        self._manifest.update(format_version=FORMAT_VERSION, upgraded_from=ROWLESS_FORMAT)
        self._reset_caches()

    def drop_segments(self, names: Sequence[str]) -> int:
        """Remove damaged segments from the store in one commit; their ids disappear (and are never
        reused). Returns the number of rows dropped. For repair: a sync then re-encodes those entries."""
        names = set(names)
        with self.transaction():
            gone = [s for s in self._manifest["segments"] if s["name"] in names]
            self._manifest["segments"] = [s for s in self._manifest["segments"] if s["name"] not in names]
            self._reset_caches()
            try:
                deleted = self.deleted_ids
            except StoreIntegrityError:
                deleted = np.zeros(0, dtype=np.int64)
                self._deleted = deleted
            self._stage_tombstones(deleted[self._known(deleted)])
        return sum(int(s["rows"]) for s in gone)

    def reset_tombstones(self) -> None:
        """Forget every tombstone in one commit (for repair of a damaged tombstone file: a sync then
        deletes again what the catalogue no longer holds)."""
        with self.transaction():
            self._deleted = np.zeros(0, dtype=np.int64)
            self._stage_tombstones(self._deleted)

    def compact(self, target_rows: int = COMPACT_ROWS, min_small: int = COMPACT_MIN_SMALL) -> int:
        """Merge runs of adjacent small segments (ids, rows and tombstones unchanged), once there are at
        least ``min_small`` segments under ``target_rows`` rows. Returns how many segments were merged.
        Call inside a transaction to make it part of a larger commit."""
        segs = self._manifest["segments"]
        small = [s for s in segs if int(s["rows"]) < target_rows]
        if len(small) < min_small:
            return 0
        groups: list[list[int]] = []
        run: list[int] = []
        for i, s in enumerate(segs):
            rows = int(s["rows"])
            adjacent = run and int(segs[run[-1]]["id_start"]) + int(segs[run[-1]]["rows"]) == int(s["id_start"])
            if rows < target_rows and adjacent and sum(int(segs[j]["rows"]) for j in run) + rows <= target_rows:
                run.append(i)
                continue
            if len(run) > 1:
                groups.append(run)
            run = [i] if rows < target_rows else []
        if len(run) > 1:
            groups.append(run)
        if not groups:
            return 0
        import pyarrow as pa

        with self.transaction():
            merged: dict[int, dict[str, Any]] = {}
            for group in groups:
                parts = [self._segment(segs[j]) for j in group]
                rows = sum(p.rows for p in parts)
                name = self._new_name()
                base = self.root / SEGMENTS / name
                self._txn_files.extend([base.with_suffix(".npy"), base.with_suffix(".parquet")])
                vec = write_npy_parts(base.with_suffix(".npy"), (self._array(p) for p in parts), (rows, self.dim),
                                      self.dtype)
                # The parts' own row checksums, not new ones: a row damaged before the merge stays detected.
                rowsums = self._stage_rowsums(name, np.concatenate([self._segment_rowsums(p) for p in parts]))
                meta = write_parquet(base.with_suffix(".parquet"),
                                     pa.concat_tables([self._segment_table(p) for p in parts]), ROW_GROUP_ROWS)
                merged[group[0]] = {"name": name, "id_start": parts[0].id_start, "rows": rows,
                                    "vectors": vec.to_dict(), "metadata": meta.to_dict(), "rowsums": rowsums}
            drop = {j for group in groups for j in group[1:]}
            self._manifest["segments"] = [merged.get(i, s) for i, s in enumerate(segs) if i not in drop]
            self._reset_caches()
        n = sum(len(g) for g in groups)
        logger.info("%s: merged %d small segments into %d", self.root, n, len(groups))
        return n


class BackgroundVerify:
    """A full check of a store running in a thread (see :meth:`FeatureStore.verify_in_background`).

    It reads through a second store object over the same commit, so the serving object's caches are never
    touched by it; what it finds is handed to the serving object.
    """

    def __init__(self, store: FeatureStore, threads: int = 2) -> None:
        self._store = store
        self._threads = threads
        self.report: VerifyReport | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clothsim-store-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            checker = FeatureStore(self._store.root, copy.deepcopy(self._store.manifest))
            report = checker.verify(full=True, threads=self._threads)
            self.report = report
            if report.problems:
                first = report.problems[0]
                more = f" ({len(report.problems) - 1} more: `clothsim verify {report.root}`)" \
                    if len(report.problems) > 1 else ""
                self._store._damage = StoreIntegrityError(first.path, first.message + more, report.root,
                                                          repairable=first.kind != "manifest")
                logger.error("%s", self._store._damage)
            else:
                logger.info("%s: every checksum verified (%.1f GiB in %.1f s)", report.root,
                            report.bytes_checked / 2**30, report.seconds)
        except OSError as exc:
            self._store._damage = StoreIntegrityError(getattr(exc, "filename", None) or self._store.root,
                                                      f"cannot be read ({exc})", self._store.root)
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> VerifyReport | None:
        """Wait for the check (at most ``timeout`` seconds); its report, or ``None`` while it runs."""
        self._done.wait(timeout)
        return self.report


# ----- manifest validation -----------------------------------------------------------------------------
def _load_manifest(path: Path, root: Path) -> dict[str, Any]:
    """Read and validate a manifest; every way it can be wrong raises :class:`StoreIntegrityError`."""
    def bad(problem: str) -> StoreIntegrityError:
        return StoreIntegrityError(path, problem, root, repairable=False)

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise bad(f"cannot be read ({exc.strerror or exc})") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(manifest, dict):
        raise bad(f"holds a JSON {type(manifest).__name__}, not an object")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise StaleStoreError(f"{path}: written by a newer clothsim (store format {version}; this one reads up to "
                              f"{FORMAT_VERSION}); upgrade clothsim, or rebuild it with `clothsim index "
                              f"CATALOGUE --out {root} --overwrite`")
    if version not in (LEGACY_FORMAT, ROWLESS_FORMAT, FORMAT_VERSION) or isinstance(version, bool):
        raise bad(f"has format_version {str(version)[:40]!r}; expected {LEGACY_FORMAT} to {FORMAT_VERSION}")
    if version != LEGACY_FORMAT:
        recorded = manifest.get("manifest_sha256")
        if not isinstance(recorded, str) or hashlib.sha256(_canonical(manifest)).hexdigest() != recorded:
            raise bad("does not match its own checksum (edited by hand or damaged)")
    _validate(manifest, bad)
    return manifest


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _validate(m: dict[str, Any], bad: Any) -> None:
    fp = m.get("fingerprint")
    if not isinstance(fp, dict) or not isinstance(fp.get("encoder"), str) or not _is_int(fp.get("dim"), 1):
        raise bad("has no valid fingerprint (encoder name and vector size)")
    if m.get("dtype") not in DTYPES:
        raise bad(f"has dtype {str(m.get('dtype'))[:40]!r}; expected one of {DTYPES}")
    segs = m.get("segments")
    if not isinstance(segs, list):
        raise bad("has no list of segments")
    if not _is_int(m.get("next_id")):
        raise bad("has no valid next_id")
    legacy = m["format_version"] == LEGACY_FORMAT
    end = 0
    names = set()
    for i, s in enumerate(segs):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not _is_int(s.get("id_start")) \
                or not _is_int(s.get("rows")):
            raise bad(f"segment #{i} is not a valid entry")
        if not re.fullmatch(r"[0-9]{1,12}", s["name"]) or s["name"] in names:
            raise bad(f"segment #{i} has an invalid or repeated name {s['name'][:40]!r}")
        names.add(s["name"])
        if s["id_start"] < end:
            raise bad(f"segment {s['name']} overlaps the one before it")
        end = s["id_start"] + s["rows"]
        if not legacy:
            keys = ("vectors", "metadata", "rowsums") if m["format_version"] == FORMAT_VERSION else ("vectors", "metadata")
            for key in keys:
                entry = s.get(key)
                if not isinstance(entry, dict) or not _is_int(entry.get("bytes")) \
                        or not isinstance(entry.get("sha256"), str):
                    raise bad(f"segment {s['name']} has no valid {key} size and checksum")
    if end > m["next_id"]:
        raise bad("has segments beyond next_id")
    if not legacy:
        if not _is_int(m.get("next_file")):
            raise bad("has no valid next_file")
        tomb = m.get("tombstones")
        if tomb is not None and (not isinstance(tomb, dict) or not isinstance(tomb.get("name"), str)
                                 or not re.fullmatch(r"[0-9]{1,12}", tomb["name"]) or not _is_int(tomb.get("bytes"))
                                 or not isinstance(tomb.get("sha256"), str)):
            raise bad("has an invalid tombstones entry")
        sync = m.get("sync")
        if sync is not None and not isinstance(sync, dict):
            raise bad("has an invalid sync marker")
    failures = m.get("failures", [])
    if not isinstance(failures, list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("reason"), str)
            for f in failures):
        raise bad("has an invalid failures list")
