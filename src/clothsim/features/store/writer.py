"""Writing a feature store: the writer lock, transactions, append and delete, compaction and the removal
of what a crash left behind. Every change writes new files and then switches the manifest in one atomic
rename (see :mod:`clothsim.features.store`)."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from clothsim import __version__
from clothsim.data.records import CatalogRecord
from clothsim.errors import UsageError
from clothsim.features.row_checksums import ALGORITHM as ROWSUM_ALGORITHM
from clothsim.features.row_checksums import row_checksums
from clothsim.features.store.format import (
    COMPACT_MIN_SMALL,
    COMPACT_ROWS,
    DTYPES,
    FORMAT_VERSION,
    MANIFEST,
    ROW_GROUP_ROWS,
    ROWLESS_FORMAT,
    SEGMENTS,
    StoreIntegrityError,
    StoreProblem,
    _canonical,
    _record_columns,
    check_unit_vectors,
    file_signature,
)
from clothsim.features.store.reader import StoreReader
from clothsim.features.store.upgrade import add_row_checksums, upgrade_legacy
from clothsim.features.writer_lock import WriterLock
from clothsim.fileio import FileDigest, remove_path, write_bytes, write_npy, write_npy_parts, write_parquet

logger = logging.getLogger(__name__)


class FeatureStore(StoreReader):
    """A store folder opened for reading and writing: everything :class:`StoreReader` reads, and changes
    committed one transaction at a time under the folder's writer lock. See :mod:`clothsim.features.store`
    for the layout and guarantees."""

    def __init__(self, root: str | Path, manifest: dict[str, Any]) -> None:
        super().__init__(root, manifest)
        self._lock = WriterLock(self.root)
        self._txn_depth = 0
        self._txn_files: list[Path] = []
        self._gc_done = False

    # ----- creating ---------------------------------------------------------------------------------
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
                    upgrade_legacy(self, drop_damaged=False)
            self._txn_depth += 1
            try:
                yield self
                if outer and self.format_version == ROWLESS_FORMAT:
                    add_row_checksums(self)  # of the segments this commit keeps (a repair drops damaged ones)
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
        """Remove the files the manifest no longer references: those a commit replaced, and any an
        interrupted writer left behind."""
        for path in self._leftovers():
            logger.debug("removing %s: the manifest no longer references it", path)
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
            problems = upgrade_legacy(self, drop_damaged=drop_damaged)
            self._write_manifest()
            self._reset_caches()
            self._collect_garbage()
        return problems

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
