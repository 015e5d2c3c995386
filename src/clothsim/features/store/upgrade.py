"""Converting stores of the older formats to format 3.

Format 1 (JSON-lines metadata, no checksums) is converted by :meth:`FeatureStore.upgrade` or by the first
transaction; format 2 (checksummed files, no row checksums) by its first transaction. Both conversions
happen inside the writer's transaction, so a crash leaves the old store as it was.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

import numpy as np

from clothsim.features.row_checksums import row_checksums
from clothsim.features.store.format import (
    FORMAT_VERSION,
    LEGACY_FORMAT,
    ROW_GROUP_ROWS,
    ROWLESS_FORMAT,
    StoreIntegrityError,
    StoreProblem,
    _record_columns,
    _row_to_record,
    check_unit_vectors,
    file_signature,
)
from clothsim.fileio import file_digest, write_parquet

if TYPE_CHECKING:
    from clothsim.features.store.writer import FeatureStore

logger = logging.getLogger(__name__)


def upgrade_legacy(store: FeatureStore, drop_damaged: bool) -> list[StoreProblem]:
    """Convert a format-1 store to format 3 inside the commit being built: Parquet metadata and row
    checksums beside the vectors, which stay where they are. With ``drop_damaged`` a segment that cannot
    be converted is left out and reported instead of failing the conversion."""
    logger.info("%s: converting the store from format 1 (JSON lines) to format 3 (Parquet, checksums)",
                store.root)
    old = copy.deepcopy(store._manifest)
    deleted = store.deleted_ids.copy()
    problems: list[StoreProblem] = []
    new_segments = []
    next_file = max([int(s["name"]) + 1 for s in old["segments"]] + [0])
    kept_ids: list[np.ndarray] = []
    for seg in old["segments"]:
        segment = store._segment(seg)
        try:
            array = store._array(segment)
            check_unit_vectors(array, what=f"vectors of {segment.vectors_path.name}")
            table = store._segment_table(segment)
            records = [_row_to_record(r) for r in table.to_pylist()]
            sources = [file_signature(r.path) for r in records]
        except (StoreIntegrityError, ValueError) as exc:
            problem = StoreProblem(getattr(exc, "path", segment.vectors_path), getattr(exc, "problem", str(exc)),
                                   "segment", segment.name)
            if not drop_damaged:
                raise StoreIntegrityError(problem.path, problem.message, store.root) from None
            logger.warning("dropping damaged segment: %s", problem)
            problems.append(problem)
            continue
        # The .npy file stays where it is (never rewritten from now on); only its checksum is new.
        meta_path = segment.vectors_path.with_suffix(".parquet")
        store._txn_files.append(meta_path)
        meta = write_parquet(meta_path, _record_columns(records, sources), ROW_GROUP_ROWS)
        new_segments.append({"name": segment.name, "id_start": int(seg["id_start"]), "rows": int(seg["rows"]),
                             "vectors": file_digest(segment.vectors_path).to_dict(), "metadata": meta.to_dict(),
                             "rowsums": store._stage_rowsums(segment.name, row_checksums(array))})
        kept_ids.append(np.arange(int(seg["id_start"]), int(seg["id_start"]) + int(seg["rows"])))
    manifest = {k: v for k, v in old.items() if k != "segments"}
    manifest.update(format_version=FORMAT_VERSION, segments=new_segments, next_file=next_file, tombstones=None,
                    upgraded_from=LEGACY_FORMAT)
    manifest.setdefault("sync", None)
    if "source_hash" not in manifest:  # format 1 wrote it last: without it the first build never finished
        manifest["sync"] = {"first_build": True, "planned_rows": None, "base_next_id": int(old["next_id"]),
                            "base_segments": len(new_segments)}
    store._manifest = manifest
    store._arrays, store._tables = {}, {}
    store._reset_caches()
    alive = np.concatenate(kept_ids) if kept_ids else np.zeros(0, dtype=np.int64)
    store._stage_tombstones(np.intersect1d(deleted, alive))
    return problems


def add_row_checksums(store: FeatureStore) -> None:
    """Convert a format-2 store to format 3 inside the transaction being built: row checksums for every
    segment, each computed only after its files were checked whole (damage is never given a checksum
    of its own; a damaged segment fails the transaction, and ``clothsim index`` repairs it first)."""
    logger.info("%s: adding row checksums (store format 2 to 3)", store.root)
    for seg in store._manifest["segments"]:
        segment = store._segment(seg)
        if "rowsums" in seg:
            continue
        if segment.name not in store._verified:
            problem = store._check_segment_files(seg)
            if problem is not None:
                raise StoreIntegrityError(problem.path, problem.message, store.root)
            store._verify_whole_segment(seg, segment)
        seg["rowsums"] = store._stage_rowsums(segment.name, row_checksums(store._array(segment)))
    store._manifest.update(format_version=FORMAT_VERSION, upgraded_from=ROWLESS_FORMAT)
    store._reset_caches()
