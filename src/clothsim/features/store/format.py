"""The on-disk format of a feature store: layout constants, the manifest and its validation, the errors
damage raises, and the small records and helpers every part of the store shares.

See :mod:`clothsim.features.store` for the layout of a store folder and its guarantees.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clothsim.data.records import CatalogRecord
from clothsim.errors import ClothsimError, StaleStoreError

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
    """Rows of an Arrow table as dicts. A search's hits are a row or two per table, and slicing out a
    row is cheaper than ``take``, whose fixed cost pays only for many rows."""
    if rows.size > 8:
        return table.take(rows).to_pylist()
    return [table.slice(int(r), 1).to_pylist()[0] for r in rows]


def _row_to_record(row: dict[str, Any]) -> CatalogRecord:
    bbox = row.get("bbox")
    return CatalogRecord(path=row["path"], category=row["category"], split=row.get("split"),
                         item_id=row.get("item_id"), attributes=tuple(row.get("attributes") or ()),
                         bbox=tuple(int(v) for v in bbox) if bbox is not None else None)  # type: ignore[arg-type]


# What numpy raises on a damaged .npy header: its parser tokenizes the header's dict text, so a flipped bit
# there surfaces as SyntaxError or tokenize.TokenError (not a ValueError subclass), besides the usual ones.
NPY_ERRORS = (ValueError, OSError, SyntaxError, EOFError, tokenize.TokenError)


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """Shape, dtype, Fortran order and data offset of a .npy file; a damaged header raises ValueError
    (a missing or unreadable file, OSError)."""
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except OSError:
            raise
        except NPY_ERRORS as exc:
            raise ValueError(f"damaged .npy header: {exc}") from None
        return shape, dtype, fortran, fh.tell()


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
    # A manifest of the first format has no checksum; one that carries a checksum is checked whatever
    # format it says, so a damaged format number is reported as damage, not as an old store.
    if version != LEGACY_FORMAT or "manifest_sha256" in manifest:
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
