"""Near-duplicates of a whole index: exact copies, then pairs above a cosine threshold through the index's
own backend, then groups that never chain unrelated items; saved in the index for searches that
collapse copies.

The threshold is the one ``clothsim duplicates --calibrate`` recorded in the index, else
:data:`clothsim.defaults.DEFAULT_DUPLICATE_THRESHOLD` (said in the log). The groups are kept in the index folder
(``duplicates/groups-<hash>.npy``, recorded with its SHA-256 in the manifest), written only once the
whole run is done: a run that is stopped leaves the previous groups as they were.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothsim.defaults import DEFAULT_DUPLICATE_NEIGHBOURS, DEFAULT_DUPLICATE_THRESHOLD
from clothsim.duplicates.copies import exact_copy_groups
from clothsim.duplicates.grouping import MAX_GROUP, DuplicateGroup, group_pairs
from clothsim.duplicates.neighbours import candidate_pairs, finish
from clothsim.errors import ClothsimError, DataError, UsageError
from clothsim.fileio import file_sha256, remove_path, write_npy

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore
    from clothsim.similarity_index import SimilarityIndex

logger = logging.getLogger(__name__)

GROUPS_DIR = "duplicates"
MANIFEST_KEY = "duplicates"


@dataclass
class DuplicateReport:
    """What a duplicate search found.

    Attributes:
        groups: Largest first; each group's members are pairwise near-duplicates.
        threshold: The cosine used, and where it came from (``threshold_source``).
        n_items: Live items searched.
        n_pairs: Candidate pairs above the threshold.
        exact_copies: Items in groups of byte-identical files.
        refused_merges: Merges the chaining guard refused (pairs alike whose groups were not).
        seconds: Time of the whole run.
        note: What searched for neighbours (the backend, or an exact scan in its place).
    """

    groups: list[DuplicateGroup]
    threshold: float
    threshold_source: str
    n_items: int
    n_pairs: int
    exact_copies: int
    refused_merges: int
    capped_merges: int
    seconds: float
    note: str
    paths: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{"groups": [{"members": [{"id", "path", "score"}, ...], "representative": id}, ...]}`` and
        the run's figures."""
        return {
            "groups": [{"members": [{"id": i, "path": self.paths.get(i), "score": round(s, 6)}
                                    for i, s in zip(g.members, g.scores)],
                        "representative": g.representative, "exact": g.exact} for g in self.groups],
            "threshold": self.threshold, "threshold_source": self.threshold_source, "items": self.n_items,
            "pairs": self.n_pairs, "refused_merges": self.refused_merges, "seconds": round(self.seconds, 3),
        }


def check_threshold(threshold: float) -> float:
    """A cosine threshold in (0, 1].

    Raises:
        UsageError: outside (0, 1].
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise UsageError(f"the duplicate threshold is a cosine in (0, 1], got {threshold}")
    return float(threshold)


def recorded_threshold(store: "FeatureStore") -> tuple[float, str]:
    """The threshold to use and where it comes from: the one calibrated on this index, or the default."""
    record = store.manifest.get(MANIFEST_KEY) or {}
    if record.get("threshold") is not None:
        return float(record["threshold"]), "calibrated on this index"
    return DEFAULT_DUPLICATE_THRESHOLD, "the default (run `clothsim duplicates --calibrate` to choose one from data)"


def find_duplicates(index: "SimilarityIndex", threshold: float | None = None,
                    neighbours: int = DEFAULT_DUPLICATE_NEIGHBOURS, *, progress: bool = True,
                    max_group: int = MAX_GROUP, save: bool = True) -> DuplicateReport:
    """Group the near-duplicates of every live item of ``index``.

    Args:
        index: An open index.
        threshold: Least cosine of two near-duplicates (default: the one recorded with the index).
        neighbours: Nearest items looked at per item.
        progress: Show a progress bar.
        max_group: Largest group the chaining guard lets grow.
        save: Keep the groups in the index folder, for searches that collapse copies.

    Raises:
        UsageError: a threshold outside (0, 1], or fewer than one neighbour.
        DataError: the index holds no live vectors.
    """
    started = time.perf_counter()
    store = index.store
    if threshold is None:
        threshold, source = recorded_threshold(store)
        logger.info("duplicate threshold %.3f: %s", threshold, source)
    else:
        threshold, source = check_threshold(threshold), "given"
    if neighbours < 1:
        raise UsageError(f"neighbours must be at least 1, got {neighbours}")
    if len(store) == 0:
        raise DataError(f"{store.root} holds no vectors to look for duplicates in")
    exact = exact_copy_groups(store)
    pairs, note = candidate_pairs(store, index.backend, threshold, neighbours, progress=progress)
    grouping = group_pairs(pairs, store.vectors_for, threshold, exact_groups=exact, max_group=max_group)
    members = [i for g in grouping.groups for i in g.members]
    records = store.records_for(np.asarray(members, dtype=np.int64)) if members else []
    report = DuplicateReport(grouping.groups, threshold, source, len(store), len(pairs),
                             sum(len(g) for g in exact), grouping.refused_merges, grouping.capped_merges,
                             time.perf_counter() - started, note, {i: r.path for i, r in zip(members, records)})
    if save:
        save_groups(store, report)
    finish(store)
    return report


def save_groups(store: "FeatureStore", report: DuplicateReport) -> Path:
    """Keep the groups in the index folder: ``(id, group)`` rows in a file named by its content, recorded
    in the manifest in one commit; the previous file is removed after it.

    Raises:
        ClothsimError: the index changed while the groups were searched (run again).
    """
    from clothsim.features.store import FeatureStore

    rows = np.asarray([(i, number) for number, g in enumerate(report.groups) for i in g.members],
                      dtype=np.int64).reshape(-1, 2)
    folder = store.root / GROUPS_DIR
    with store.writer():
        on_disk = FeatureStore.open(store.root, verify=False, check_files=False).manifest
        if on_disk.get("segments") != store.manifest.get("segments") or \
                on_disk.get("tombstones") != store.manifest.get("tombstones"):
            raise ClothsimError(f"{store.root} changed while its duplicates were searched; run the same command "
                                "again")
        folder.mkdir(exist_ok=True)
        draft = folder / ".groups.npy"
        digest = write_npy(draft, rows)
        target = folder / f"groups-{digest.sha256[:16]}.npy"
        draft.rename(target)
        record = {**(store.manifest.get(MANIFEST_KEY) or {}), "groups_file": f"{GROUPS_DIR}/{target.name}",
                  "groups_sha256": digest.sha256, "groups": len(report.groups),
                  "grouped_with_threshold": report.threshold, "searched": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        store.commit(**{MANIFEST_KEY: record})
        for stale in folder.iterdir():  # the previous groups, and whatever a stopped run left
            if stale != target:
                remove_path(stale)
    return target


@dataclass(frozen=True)
class RecordedGroups:
    """The groups an earlier duplicate search kept in the index: each grouped id's group and the
    groups' live sizes."""

    group_of: dict[int, int]
    sizes: dict[int, int]


def recorded_groups(store: "FeatureStore") -> RecordedGroups | None:
    """The groups kept in the index, checked against their SHA-256, or ``None`` when there are none.

    Raises:
        DataError: the groups file is missing or damaged (the message names it and the fix).
    """
    record = store.manifest.get(MANIFEST_KEY) or {}
    name = record.get("groups_file")
    if not name:
        return None
    path = store.root / name
    if not path.is_file() or file_sha256(path) != record.get("groups_sha256"):
        raise DataError(f"{path}: the duplicate groups of this index are missing or damaged; run "
                        f"`clothsim duplicates --index {store.root}` again")
    rows = np.load(path, allow_pickle=False)
    live = set(store.live_ids().tolist())
    group_of = {int(i): int(g) for i, g in rows if int(i) in live}
    sizes: dict[int, int] = {}
    for g in group_of.values():
        sizes[g] = sizes.get(g, 0) + 1
    return RecordedGroups(group_of, sizes)
