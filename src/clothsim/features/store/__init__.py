"""The feature store: L2-normalised vectors aligned row by row with columnar catalogue metadata.

The package in parts: :mod:`~clothsim.features.store.format` (layout, manifest, errors),
:mod:`~clothsim.features.store.reader` and :mod:`~clothsim.features.store.metadata` (reading, no writer
needed), :mod:`~clothsim.features.store.verify` (whole-store checks),
:mod:`~clothsim.features.store.writer` (the read-write :class:`FeatureStore`: lock, transactions, append,
delete, compaction, clean-up) and :mod:`~clothsim.features.store.upgrade` (older formats to the current).

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

from clothsim.encoders.spec import fingerprint_mismatch
from clothsim.features.store.format import (
    AUTO_VERIFY_BYTES,
    BACKENDS,
    COMPACT_MIN_SMALL,
    COMPACT_ROWS,
    DTYPES,
    FORMAT_VERSION,
    LEGACY_FORMAT,
    MANIFEST,
    NO_CATEGORY,
    NORM_TOLERANCE,
    ROW_GROUP_ROWS,
    ROWLESS_FORMAT,
    SEGMENTS,
    Segment,
    StoredItem,
    StoreIntegrityError,
    StoreProblem,
    UnfinishedStoreError,
    VerifyReport,
    _canonical,  # noqa: F401  (recomputing a manifest's checksum, e.g. in tests)
    check_unit_vectors,
    file_signature,
    repair_hint,
)
from clothsim.features.store.reader import StoreReader
from clothsim.features.store.verify import BackgroundVerify
from clothsim.features.store.writer import FeatureStore
from clothsim.features.writer_lock import StoreBusyError, WriterLock

__all__ = [
    "AUTO_VERIFY_BYTES", "BACKENDS", "COMPACT_MIN_SMALL", "COMPACT_ROWS", "DTYPES", "FORMAT_VERSION",
    "LEGACY_FORMAT", "MANIFEST", "NO_CATEGORY", "NORM_TOLERANCE", "ROW_GROUP_ROWS", "ROWLESS_FORMAT", "SEGMENTS",
    "BackgroundVerify", "FeatureStore", "Segment", "StoreBusyError", "StoredItem", "StoreIntegrityError",
    "StoreProblem", "StoreReader", "UnfinishedStoreError", "VerifyReport", "WriterLock", "check_unit_vectors",
    "file_signature", "fingerprint_mismatch", "repair_hint",
]
