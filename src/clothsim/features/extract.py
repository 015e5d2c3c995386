"""Batched feature extraction from a catalogue into a :class:`FeatureStore`: build, resume, sync, repair.

One path does all of it. The catalogue is compared with the store (each entry by its record and its
file's size and modification time); only what changed is encoded: new entries are added, entries gone
from the catalogue are tombstoned, changed files are re-encoded, and an entry whose file did not change
but whose labels did reuses its stored vector. Work is committed every ``checkpoint_every`` images, so an
interrupted run loses at most one checkpoint; the same call again continues from the last one and ends
with exactly the store an uninterrupted run would have written (same ids, rows and vectors).

Images are decoded by the extraction engine (threads of this process for the default ``local`` engine,
a Ray cluster for ``ray``) while the runtime encodes, so decoding and inference overlap. A catalogue entry that cannot be encoded (missing, a dangling link, a link loop, a
folder, unreadable, undecodable, or a vector that is not finite) is skipped, recorded in the store's
failure list with the reason and reported; it is not retried until its file changes.

With ``overwrite`` a store that cannot be synced (another encoder, dtype or crop setting, or a damaged
manifest) is rebuilt in a folder beside it and swapped in only when complete, so the old index survives a
failed rebuild.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from clothsim.data.records import CatalogRecord
from clothsim.defaults import DEFAULT_CHECKPOINT_EVERY
from clothsim.encoders.base import Encoder
from clothsim.engines import EncodedShard, ExtractionEngine
from clothsim.errors import EmptyCatalogError, StaleStoreError, UsageError
from clothsim.features.writer_lock import hold_writer
from clothsim.features.store import (
    NORM_TOLERANCE,
    FeatureStore,
    StoreIntegrityError,
    fingerprint_mismatch,
)
from clothsim.features.model_files import keep_model_file, model_file_problem
from clothsim.fileio import remove_path, rename_path
from clothsim.images import special_file_kind

logger = logging.getLogger(__name__)

#: Images per checkpoint by default: about 50 s of work for the default encoder on 2 CPU cores.
REBUILD_SUFFIX = ".rebuild"
REPLACED_SUFFIX = ".replaced"

Signature = tuple[int, int]


@dataclass
class ExtractionReport:
    """What an extraction did.

    ``n_encoded`` counts the live vectors in the store, ``n_new`` those this run computed (the rest were
    already there, came from an interrupted run, or were reused for an unchanged file), ``seconds`` this
    run's time; ``failures`` lists ``{"path", "reason"}`` for every catalogue entry that is not encoded.
    ``n_added``, ``n_removed`` and ``n_reencoded`` describe the change against what the store held
    (``n_relabelled``: entries whose labels changed while their file did not, so the vector was reused);
    ``repaired`` names the damaged files this run replaced.
    """

    store_dir: Path
    n_records: int
    n_encoded: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    n_new: int = 0
    resumed_shards: int = 0
    reused: bool = False
    n_added: int = 0
    n_removed: int = 0
    n_reencoded: int = 0
    n_relabelled: int = 0
    first_build: bool = False
    rebuilt: bool = False
    #: Ids from this one up were handed out by this run (the items it added or re-encoded).
    new_ids_from: int | None = None
    repaired: list[str] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        return self.n_new / self.seconds if self.seconds > 0 and self.n_new else float("nan")

    def summary(self) -> str:
        """``+N added, -M removed, ~K re-encoded`` (with relabelled entries when there were any)."""
        text = f"+{self.n_added} added, -{self.n_removed} removed, ~{self.n_reencoded} re-encoded"
        if self.n_relabelled:
            text += f", {self.n_relabelled} relabelled without re-encoding"
        return text


def catalog_hash(records: Sequence[CatalogRecord]) -> str:
    """A digest of the catalogue (paths, labels, boxes), to tell a resumed run it is the same work."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record.to_dict(), sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


# ----- what a catalogue entry is on disk ----------------------------------------------------------------
def probe_entry(path: str) -> Signature | str:
    """``(size, mtime_ns)`` of a catalogue entry's file, or the reason it cannot be encoded.

    The reasons name what the entry is: a missing file, a dangling symbolic link, a link loop, a folder,
    a named pipe, a socket or a device, a file this process may not read, or a name that is not valid
    UTF-8 (the index stores names as UTF-8 text). A URI (``s3://...``) is asked of pyarrow's filesystem
    layer.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "its file name is not valid UTF-8; rename the file (e.g. with convmv) to index it"
    if "://" in path:
        return _probe_uri(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "dangling symbolic link (its target does not exist)" if os.path.islink(path) else "file not found"
    except PermissionError:
        return "permission denied (its folder cannot be entered)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"cannot be read ({exc.strerror or exc})"
    except ValueError as exc:  # e.g. an embedded NUL byte from a malformed annotation file
        return f"invalid path ({exc})"
    if stat.S_ISDIR(st.st_mode):
        return "a directory, not an image file"
    if not stat.S_ISREG(st.st_mode):
        return f"{special_file_kind(st.st_mode)}, not an image file"
    if not os.access(path, os.R_OK):
        return UNREADABLE
    return int(st.st_size), int(st.st_mtime_ns)


#: The reason for a file this process may not read; as for any entry that could not be read (not one
#: that is gone), a row it already has in the index is kept, never deleted for that.
UNREADABLE = "permission denied (not readable)"


def _could_not_read(reason: str) -> bool:
    """Whether a probe failed because the file could not be read now, not because it is gone or no image."""
    return reason.startswith(("permission denied", "cannot be read"))


def _probe_uri(uri: str) -> Signature | str:
    from pyarrow import fs

    try:
        filesystem, inner = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(inner)
    except (OSError, ValueError) as exc:
        return f"cannot be read ({exc})"
    if info.type == fs.FileType.NotFound:
        return "file not found"
    if info.type != fs.FileType.File:
        return "a directory, not an image file" if info.type == fs.FileType.Directory else "not a regular file"
    mtime = info.mtime_ns if info.mtime_ns is not None else 0
    return int(info.size or 0), int(mtime)


def _record_key(path: str, category: str, split: Any, item_id: Any, attributes: Any, bbox: Any) -> tuple:
    return (path, category, split, item_id, tuple(attributes or ()), tuple(bbox) if bbox is not None else None)


def _key_of(record: CatalogRecord) -> tuple:
    return _record_key(record.path, record.category, record.split, record.item_id, record.attributes, record.bbox)


@dataclass
class _Plan:
    """What a sync will do, decided before any of it is done."""

    delete_ids: np.ndarray
    copies: list[tuple[int, CatalogRecord, Signature]]
    encode: list[tuple[CatalogRecord, Signature]]
    failures: list[dict[str, Any]]
    n_added: int
    n_removed: int
    n_reencoded: int
    n_relabelled: int
    reencoded_paths: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not self.delete_ids.size and not self.copies and not self.encode


def _plan(store: FeatureStore, records: Sequence[CatalogRecord], probes: Sequence[Signature | str],
          crops: bool, base_next_id: int, force: bool = False) -> _Plan:
    """Compare the catalogue with the store's live rows (as multisets, so repeated entries count).

    With ``force`` no row written before this sync began counts as up to date, no vector is reused and
    earlier failures are tried again: every entry is encoded anew.
    """
    rows = store.metadata_table().to_pylist() if store.total_rows else []
    ids = store.all_ids()
    live = store.live_mask()
    size, mtime = store.source_signatures()
    live_by_key: dict[tuple, deque[int]] = defaultdict(deque)
    live_by_record: dict[tuple, deque[int]] = defaultdict(deque)  # whatever the file's signature
    for pos in np.flatnonzero(live & (ids >= base_next_id) if force else live):
        r = rows[pos]
        key = _record_key(r["path"], r["category"], r["split"], r["item_id"], r["attributes"], r["bbox"])
        live_by_key[(key, int(size[pos]), int(mtime[pos]))].append(int(pos))
        live_by_record[key].append(int(pos))
    known_failures = {} if force else {(f["path"], f.get("size"), f.get("mtime_ns")): f
                                       for f in store.failures if "size" in f}

    kept = np.zeros(len(rows), dtype=bool)
    failures: list[dict[str, Any]] = []
    to_add: list[tuple[CatalogRecord, Signature]] = []
    for record, probe in zip(records, probes):
        if isinstance(probe, str):
            failure = {"path": record.path, "reason": probe}
            if _could_not_read(probe):  # unreadable now: the row it has stays (deleting it would lose it)
                slot = live_by_record.get(_key_of(record))
                while slot and kept[slot[0]]:
                    slot.popleft()
                if slot:
                    kept[slot.popleft()] = True
                    failure["reason"] = f"{probe}; its vector from an earlier run is kept"
            failures.append(failure)
            continue
        slot = live_by_key.get((_key_of(record), probe[0], probe[1]))
        while slot and kept[slot[0]]:
            slot.popleft()
        if slot:
            kept[slot.popleft()] = True
            continue
        failed = known_failures.get((record.path, probe[0], probe[1]))
        if failed is not None:  # unchanged since it failed: not retried
            failures.append(dict(failed))
            continue
        to_add.append((record, probe))
    delete_pos = np.flatnonzero(live & ~kept)

    # Count changes the way a person reads them: a path both removed and added is one changed entry.
    removed_by_path: dict[str, deque[int]] = defaultdict(deque)
    for pos in delete_pos:
        removed_by_path[rows[pos]["path"]].append(int(pos))
    reencoded = relabelled = 0
    reencoded_paths: set[str] = set()
    for record, probe in to_add:
        slot = removed_by_path.get(record.path)
        if slot:
            pos = slot.popleft()
            if (int(size[pos]), int(mtime[pos])) == probe and not force:
                relabelled += 1
            else:
                reencoded += 1
                reencoded_paths.add(record.path)
    # A file that did not change keeps its vector: reuse it from any row written before this sync began.
    copies: list[tuple[int, CatalogRecord, Signature]] = []
    encode: list[tuple[CatalogRecord, Signature]] = []
    if to_add and force:
        encode = list(to_add)
    elif to_add:
        by_vector: dict[tuple, int] = {}
        for pos in np.flatnonzero(ids < base_next_id):
            r = rows[pos]
            bbox = tuple(r["bbox"]) if crops and r["bbox"] is not None else None
            by_vector.setdefault((r["path"], bbox, int(size[pos]), int(mtime[pos])), int(ids[pos]))
        for record, probe in to_add:
            bbox = tuple(record.bbox) if crops and record.bbox is not None else None
            source = by_vector.get((record.path, bbox, probe[0], probe[1]))
            if source is not None:
                copies.append((source, record, probe))
            else:
                encode.append((record, probe))
    return _Plan(ids[delete_pos], copies, encode, failures, len(to_add) - reencoded - relabelled,
                 int(delete_pos.size) - reencoded - relabelled, reencoded, relabelled, reencoded_paths)


# ----- the overwrite swap ------------------------------------------------------------------------------
def _beside(store_dir: Path, suffix: str) -> Path:
    return store_dir.with_name(store_dir.name + suffix)


def _is_complete_store(path: Path) -> bool:
    try:
        return FeatureStore.open(path, allow_unfinished=True, verify=False).sync_pending is None
    except (OSError, StoreIntegrityError, StaleStoreError):
        return False


def _recover_swap(store_dir: Path) -> None:
    """Finish (or undo) an ``overwrite`` swap that a crash interrupted between its two renames."""
    rebuilt, replaced = _beside(store_dir, REBUILD_SUFFIX), _beside(store_dir, REPLACED_SUFFIX)
    if not store_dir.exists():
        if _is_complete_store(rebuilt):
            logger.warning("finishing an interrupted swap: %s becomes %s", rebuilt, store_dir)
            rename_path(rebuilt, store_dir)
        elif FeatureStore.exists(replaced):
            logger.warning("undoing an interrupted swap: restoring %s from %s", store_dir, replaced)
            rename_path(replaced, store_dir)
    if store_dir.exists() and replaced.exists():
        remove_path(replaced)


def _swap_in(rebuilt: Path, store_dir: Path) -> None:
    """Replace ``store_dir`` by the complete store at ``rebuilt``: two renames, recoverable between them."""
    replaced = _beside(store_dir, REPLACED_SUFFIX)
    if replaced.exists():
        remove_path(replaced)
    rename_path(store_dir, replaced)
    rename_path(rebuilt, store_dir)
    remove_path(replaced)


def _removable_scratch(path: Path) -> bool:
    # Only ever delete a folder beside the index that is ours: a store, or empty.
    return path.is_dir() and (FeatureStore.exists(path) or not any(path.iterdir()))


# ----- the entry point ---------------------------------------------------------------------------------
def extract_features(
    records: Sequence[CatalogRecord],
    encoder: Encoder,
    store_dir: str | Path,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    dtype: str = "float32",
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    use_bbox: bool = True,
    overwrite: bool = False,
    rebuild: bool = False,
    reencode: bool = False,
    progress: bool = True,
    extra_manifest: dict[str, Any] | None = None,
    engine: Any = None,
) -> ExtractionReport:
    """Make the feature store at ``store_dir`` hold exactly the encoded ``records``, encoding only what
    is missing or changed.

    Args:
        records: The catalogue, e.g. from :func:`clothsim.data.read_catalog`.
        encoder: From :func:`clothsim.create_encoder`.
        store_dir: Output folder. A complete store there made by the same encoder setup is synced to
            ``records`` (reused as it is when nothing changed); an interrupted run is continued; damaged
            segments are re-encoded.
        batch_size: Images per forward pass.
        num_workers: Threads decoding images beside the encoder (0 decodes between batches).
        dtype: ``"float32"`` or ``"float16"`` on disk.
        checkpoint_every: Images encoded between two commits (what an interruption can lose at most).
        use_bbox: Crop to each record's bounding box where it has one.
        overwrite: Rebuild (beside, then swap) a store made with another encoder setup, dtype or crop
            setting, or whose manifest is damaged, instead of refusing; a store that can be synced is
            synced (what a cache wants).
        rebuild: Rebuild the store from scratch in any case, beside the old one, then swap it in: every
            image is encoded again and tombstoned rows are purged (``clothsim index --overwrite``).
        reencode: Encode every entry again in place, also those whose file looks unchanged (same size
            and modification time); their old rows are tombstoned.
        progress: Show a tqdm progress bar.
        extra_manifest: More fields to stamp on the manifest (e.g. where the weights came from).
        engine: What decodes and encodes (an :mod:`clothsim.engines` plug-in or its name); ``None`` is
            the ``local`` engine (decoding threads here, the encoder's runtime here).

    Raises:
        EmptyCatalogError: ``records`` is empty.
        StaleStoreError: ``store_dir`` holds another encoder setup's store and not ``overwrite``.
        StoreIntegrityError: the manifest at ``store_dir`` is damaged and not ``overwrite``.
    """
    if not records:
        raise EmptyCatalogError("the catalogue has no images to encode")
    if batch_size < 1 or checkpoint_every < 1:
        raise UsageError("batch_size and checkpoint_every must be at least 1")
    store_dir = Path(store_dir)
    with hold_writer(store_dir):  # one writer per index folder, the rebuild and swap of --overwrite included
        return _extract_locked(records, encoder, store_dir, overwrite or rebuild, rebuild, dict(
            batch_size=batch_size, num_workers=num_workers, dtype=dtype, checkpoint_every=checkpoint_every,
            use_bbox=use_bbox, progress=progress, extra_manifest=extra_manifest, engine=engine,
            reencode=reencode))


def _extract_locked(records: Sequence[CatalogRecord], encoder: Encoder, store_dir: Path, overwrite: bool,
                    rebuild: bool, options: dict[str, Any]) -> ExtractionReport:
    """:func:`extract_features` once the index folder's writer lock is held."""
    _recover_swap(store_dir)
    fingerprint = encoder.fingerprint()
    use_bbox, engine = options["use_bbox"], options["engine"]
    # Cropping changes the vectors, so it is part of what a store is checked against; it only has an
    # effect when some record has a box.
    crops = use_bbox and any(r.bbox is not None for r in records)
    if isinstance(engine, str):
        from clothsim.engines import resolve_engine

        engine = resolve_engine(engine)  # before any work: an unavailable engine fails at once
    options.update(crops=crops, engine=engine)
    dtype = options["dtype"]

    if FeatureStore.exists(store_dir):
        try:
            store = FeatureStore.open(store_dir, allow_unfinished=True, verify=False, check_files=False)
            refusal = _refusal(store, fingerprint, dtype, crops, use_bbox, records)
        except StoreIntegrityError:
            if not overwrite:
                raise
            logger.warning("%s has a damaged manifest; rebuilding it beside and swapping it in", store_dir)
            refusal = "damaged"
        if rebuild or (overwrite and refusal is not None):  # a fresh build, beside, then swapped in
            return _rebuild(records, encoder, store_dir, fingerprint, options)
        if refusal is not None:
            raise StaleStoreError(f"{store_dir} holds a store made with {refusal}; pass overwrite=True "
                                  "(--overwrite) to re-encode it, or choose another folder")
    report = _sync(records, encoder, store_dir, fingerprint, options)
    scratch = _beside(store_dir, REBUILD_SUFFIX)
    if _removable_scratch(scratch):
        logger.info("removing %s, an unfinished rebuild this run made unnecessary", scratch)
        remove_path(scratch)
    return report


def _refusal(store: FeatureStore, fingerprint: dict[str, Any], dtype: str, crops: bool, use_bbox: bool,
             records: Sequence[CatalogRecord]) -> str | None:
    """Why ``store`` cannot be synced to this run's setup (``None`` when it can)."""
    if fingerprint_mismatch(fingerprint, store.fingerprint):
        return "another encoder setup"
    if store.dtype != dtype:
        return f"another dtype ({store.dtype}; this run asks for {dtype})"
    if store.total_rows == 0:
        return None  # nothing encoded yet: any crop setting is fine
    stored_crops = store.manifest.get("crop_to_bbox")
    if stored_crops is None and not any(r.bbox is not None for r in records):
        stored_crops = False  # an older store over records without boxes: nothing was cropped
    if stored_crops is None and store.sync_pending is not None:
        stored_crops = crops  # an unfinished first build of this very setup
    if stored_crops != crops:
        had = {True: "cropped to bounding boxes", False: "not cropped", None: "an unrecorded crop setting"}
        return (f"images {had[stored_crops]}, and this run asks for them "
                f"{had[crops]} ({'use_bbox' if use_bbox else '--no-bbox'})")
    return None


def _rebuild(records: Sequence[CatalogRecord], encoder: Encoder, store_dir: Path, fingerprint: dict[str, Any],
             options: dict[str, Any]) -> ExtractionReport:
    """Build the new store beside the old one, then swap it in: the old one survives any failure."""
    rebuilt = _beside(store_dir, REBUILD_SUFFIX)
    if FeatureStore.exists(rebuilt):
        try:
            scratch = FeatureStore.open(rebuilt, allow_unfinished=True, verify=False, check_files=False)
            stale = _refusal(scratch, fingerprint, options["dtype"], options["crops"], options["use_bbox"], records)
        except StoreIntegrityError:
            stale = "damage"
        if stale is not None:
            logger.info("discarding %s (an unfinished rebuild with %s)", rebuilt, stale)
            remove_path(rebuilt)
    elif _removable_scratch(rebuilt):
        remove_path(rebuilt)
    logger.warning("rebuilding %s beside it, in %s; the current index stays until the new one is complete",
                   store_dir, rebuilt)
    try:
        report = _sync(records, encoder, rebuilt, fingerprint, options)
    except BaseException:
        # A full disk, Ctrl-C or SIGTERM: the partial rebuild goes (it holds disk space, and the index it
        # was to replace is intact). Only a kill -9 leaves it, for the same command to resume.
        if _removable_scratch(rebuilt):
            logger.warning("removing the unfinished rebuild %s; %s is unchanged", rebuilt, store_dir)
            try:
                remove_path(rebuilt)
            except OSError as exc:
                logger.warning("could not remove %s (%s); the next run removes or resumes it", rebuilt, exc)
        raise
    _swap_in(rebuilt, store_dir)
    report.store_dir = store_dir
    report.rebuilt = True
    report.reused = False
    return report


def _sync(records: Sequence[CatalogRecord], encoder: Encoder, store_dir: Path, fingerprint: dict[str, Any],
          options: dict[str, Any]) -> ExtractionReport:
    started = time.perf_counter()
    dtype, crops = options["dtype"], options["crops"]
    first_build = not FeatureStore.exists(store_dir)
    if first_build:
        planned = {"first_build": True, "planned_rows": len(records), "base_next_id": 0, "base_segments": 0}
        store = FeatureStore.create(store_dir, fingerprint, dtype=dtype,
                                    extra={**(options["extra_manifest"] or {}), "sync": planned})
    else:
        store = FeatureStore.open(store_dir, allow_unfinished=True, verify=False, check_files=False)
    report = ExtractionReport(store_dir, len(records), 0)
    with store.writer():
        repaired = _repair(store)
        report.repaired = repaired
        pending = store.sync_pending
        report.first_build = bool(pending and pending.get("first_build"))
        base_next_id = int(pending["base_next_id"]) if pending else int(store.manifest["next_id"])
        if pending:
            resumed = [s for s in store.segments if s.id_start >= base_next_id]
            report.resumed_shards = len(resumed)
            if resumed:
                logger.info("resuming: %d images already encoded by the interrupted run", sum(s.rows for s in resumed))

        probes = [probe_entry(r.path) for r in records]
        # A resumed --reencode keeps what the interrupted run already encoded again (rows from base_next_id).
        plan = _plan(store, records, probes, crops, base_next_id, force=options.get("reencode", False))
        for name in ("n_added", "n_removed", "n_reencoded", "n_relabelled"):
            setattr(report, name, getattr(plan, name))
        report.new_ids_from = base_next_id
        source = catalog_hash(records)
        if plan.empty and not pending and not repaired and _same_failures(store.failures, plan.failures):
            updates: dict[str, Any] = {}
            if store.manifest.get("source_hash") != source:
                updates.update(source_hash=source, n_source_records=len(records))  # same entries, new order
            if "encoder_spec" not in store.manifest or model_file_problem(store) is not None:
                # An index from before specs were recorded, or whose model file went missing or was
                # damaged: the encoder of this run is the same model, so its file is kept again.
                updates["encoder_spec"] = keep_model_file(store.root, encoder.spec).to_dict()
            if updates:
                store.commit(**updates)
            logger.info("%s already holds these %d images encoded by %s; reusing it",
                        store_dir, len(records), encoder.name)
            report.reused = True
            report.n_encoded = len(store)
            report.failures = store.failures
            return report

        with store.transaction():
            if not pending:
                store.manifest["sync"] = {"first_build": first_build, "planned_rows": len(records),
                                          "base_next_id": base_next_id, "base_segments": len(store.segments),
                                          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            if plan.delete_ids.size:
                store.delete(plan.delete_ids)
            if plan.copies:
                store.append_rows_from(np.array([c[0] for c in plan.copies], dtype=np.int64),
                                       [c[1] for c in plan.copies], [c[2] for c in plan.copies])
            store.manifest["failures"] = list(plan.failures)  # a copy: the encoding appends to it
        n_new = _encode_missing(store, encoder, plan.encode, options)
        compute_seconds = time.perf_counter() - started
        _uncount_failed(report, plan, store.failures[len(plan.failures):])

        with store.transaction():
            store.compact()
            updates = dict(
                sync=None, source_hash=source, n_source_records=len(records), use_bbox=options["use_bbox"],
                crop_to_bbox=crops, runtime=getattr(encoder, "runtime", "torch"),
                encoder_spec=keep_model_file(store.root, encoder.spec).to_dict(), **(options["extra_manifest"] or {}))
            if n_new or "extraction" not in store.manifest:
                # Throughput of this run, kept so a report that reuses the store can say how fast it was built.
                speed = n_new / compute_seconds if n_new and compute_seconds > 0 else None
                updates["extraction"] = {"seconds": round(compute_seconds, 3), "n_encoded": n_new,
                                         "resumed_shards": report.resumed_shards, "images_per_second": speed}
            store.commit(**updates)
    report.n_new = n_new
    report.seconds = compute_seconds
    report.n_encoded = len(store)
    report.failures = store.failures
    if report.failures:
        logger.warning("%d of %d catalogue entries could not be encoded and were skipped",
                       len(report.failures), len(records))
    return report


def _uncount_failed(report: ExtractionReport, plan: _Plan, new_failures: list[dict[str, Any]]) -> None:
    """Entries that failed to encode in this run were not added (nor re-encoded: their old row is gone)."""
    failed = {f["path"] for f in new_failures}
    for record, _ in plan.encode:
        if record.path not in failed:
            continue
        failed.discard(record.path)
        if record.path in plan.reencoded_paths:
            report.n_reencoded -= 1
            report.n_removed += 1
        else:
            report.n_added -= 1


def _same_failures(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> bool:
    def norm(items: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps(f, sort_keys=True) for f in items)
    return norm(old) == norm(new)


def _repair(store: FeatureStore) -> list[str]:
    """Check every checksum; drop damaged segments and tombstones so the sync re-encodes what they held."""
    problems = store.upgrade(drop_damaged=True) if store.is_legacy else []
    report = store.verify(full=True)
    problems += report.problems
    segments = sorted({p.segment for p in report.problems if p.kind == "segment" and p.segment})
    if segments:
        rows = store.drop_segments(segments)
        logger.warning("%s: %d damaged segment(s) dropped (%d rows); their images are re-encoded now",
                       store.root, len(segments), rows)
    if any(p.kind == "tombstones" for p in report.problems):
        logger.warning("%s: the tombstone file is damaged; deletions are recomputed from the catalogue", store.root)
        store.reset_tombstones()
    for problem in problems:
        logger.warning("repairing %s", problem)
    return [str(p) for p in problems]


def _local_engine() -> ExtractionEngine:
    from clothsim.engines.local import LocalEngine

    return LocalEngine()


def _encode_missing(store: FeatureStore, encoder: Encoder, todo: list[tuple[CatalogRecord, Signature]],
                    options: dict[str, Any]) -> int:
    """Encode ``todo`` in catalogue order, committing every ``checkpoint_every`` images."""
    if not todo:
        return 0
    records = [r for r, _ in todo]
    size = options["checkpoint_every"]
    n_new = 0
    engine: ExtractionEngine = options.get("engine") or _local_engine()
    shards: Iterator[EncodedShard] = engine.iter_shards(
        records, size, encoder, batch_size=options["batch_size"], num_workers=options["num_workers"],
        use_bbox=options["use_bbox"], progress=options["progress"])
    for done in shards:
        vectors = done.outputs if done.outputs is not None else np.zeros((0, encoder.dim), np.float32)
        indices = list(done.indices)
        failures = list(done.failures)
        if len(indices):
            norms = np.linalg.norm(np.asarray(vectors, dtype=np.float32), axis=1)
            bad = ~np.isfinite(norms) | (np.abs(norms - 1.0) > NORM_TOLERANCE)
            for i in np.flatnonzero(bad):
                failures.append({"path": records[indices[i]].path,
                                 "reason": f"the encoder gave a vector that is not a finite unit vector (norm {norms[i]})"})
            vectors = vectors[~bad]
            indices = [ix for ix, b in zip(indices, bad) if not b]
        signed = _signed_failures(failures, todo)
        store.append(np.asarray(vectors).astype(options["dtype"]), [records[i] for i in indices], failures=signed,
                     sources=[todo[i][1] for i in indices])
        n_new += len(indices)
    return n_new


def _signed_failures(failures: list[dict[str, Any]], todo: list[tuple[CatalogRecord, Signature]]) -> list[dict]:
    # The file's signature goes with its failure, so an unchanged file is not retried by the next sync.
    signature = {r.path: s for r, s in todo}
    out = []
    for failure in failures:
        sig = signature.get(failure["path"])
        out.append({**failure, "size": sig[0], "mtime_ns": sig[1]} if sig else dict(failure))
    return out
