"""Checking a store whole: every file's size, header and checksum (or, for format 1, every vector's norm),
the metadata reading back, and the files a crash left behind; at open, on demand, or in a thread while
the store serves."""

from __future__ import annotations

import copy
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothsim.features.store.format import (
    _LEFTOVER,
    SEGMENTS,
    Segment,
    StoreIntegrityError,
    StoreProblem,
    VerifyReport,
    check_unit_vectors,
)
from clothsim.fileio import file_digest

if TYPE_CHECKING:
    from clothsim.features.store.reader import StoreReader

logger = logging.getLogger(__name__)


class VerifyMixin:
    """The whole-store checks of :class:`~clothsim.features.store.reader.StoreReader` (it owns the state)."""

    root: Path
    _manifest: dict[str, Any]
    _tables: dict[str, Any]
    _verified: set[str]

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

    def verify_in_background(self, threads: int = 2) -> BackgroundVerify:
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

    def _verify_whole_segment(self, entry: dict[str, Any], segment: Segment) -> None:
        problems, _ = self._verify_segment(entry, segment)
        if problems:
            raise StoreIntegrityError(problems[0].path, problems[0].message, self.root)


class BackgroundVerify:
    """A full check of a store running in a thread (see :meth:`FeatureStore.verify_in_background`).

    It reads through a second store object over the same commit, so the serving object's caches are never
    touched by it; what it finds is handed to the serving object.
    """

    def __init__(self, store: StoreReader, threads: int = 2) -> None:
        self._store = store
        self._threads = threads
        self.report: VerifyReport | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clothsim-store-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            checker = type(self._store)(self._store.root, copy.deepcopy(self._store.manifest))
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
