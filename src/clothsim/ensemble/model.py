"""A fitted ensemble on disk: which parts, which columns of each, which weights.

Folder layout::

    ensemble.json          parts (name, weights source, fingerprint), weights, method, fit hash (written last)
    part-N-columns.npy     the column numbers kept from part N (int64, ascending)

``fit_sha256`` hashes everything that changes the output vectors (parts' fingerprints, columns,
weights, method); the ensemble encoder's fingerprint carries it, so a refit makes old stores stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clothsim.ensemble.combine import METHODS, check_weights, combine
from clothsim.fileio import write_json, write_npy
from clothsim.errors import DataError

logger = logging.getLogger(__name__)

MODEL_FILE = "ensemble.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PartSpec:
    """One part of an ensemble: which encoder, with which weights, producing what.

    Attributes:
        name: Registry name of the part encoder (e.g. ``"vgg16"``).
        weights_source: What was passed as its ``weights`` (absolute path, ``"random"`` or ``None``).
        fingerprint: The part encoder's fingerprint when the ensemble was fitted.
    """

    name: str
    weights_source: str | None
    fingerprint: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.fingerprint["dim"])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weights_source": self.weights_source,
                "fingerprint": json.loads(json.dumps(self.fingerprint))}


@dataclass(frozen=True)
class EnsembleModel:
    """A fitted ensemble: apply it to the parts' vectors with :meth:`combine`.

    Attributes:
        parts: The parts, in order.
        columns: Per part, the kept column numbers (ascending int64).
        weights: Per part, its weight (sums to 1).
        method: ``"average"`` or ``"concat"``.
        info: How the fit went (weights' origin, search table, split sizes); not hashed.
    """

    parts: tuple[PartSpec, ...]
    columns: tuple[np.ndarray, ...]
    weights: tuple[float, ...]
    method: str = "average"
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.parts) < 2:
            raise ValueError(f"an ensemble needs at least two parts, got {len(self.parts)}")
        if len(self.columns) != len(self.parts):
            raise ValueError(f"{len(self.parts)} parts but {len(self.columns)} column lists")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        check_weights(self.weights, len(self.parts))
        for part, cols in zip(self.parts, self.columns):
            if cols.ndim != 1 or cols.size == 0 or cols.min() < 0 or cols.max() >= part.dim:
                raise ValueError(f"part {part.name}: column numbers must lie in [0, {part.dim}) ")
        if self.method == "average" and len({c.size for c in self.columns}) != 1:
            raise ValueError("average needs the same number of kept columns in every part")

    @property
    def dim(self) -> int:
        """Size of the combined vectors."""
        sizes = [c.size for c in self.columns]
        return sizes[0] if self.method == "average" else sum(sizes)

    @property
    def label(self) -> str:
        """A short readable name that tells fits apart, e.g. ``ensemble:vgg16+resnet50 (weights 0.3/0.7)``."""
        weights = "/".join(f"{float(w):g}" for w in self.weights)
        method = "" if self.method == "average" else f"{self.method}, "
        return "ensemble:" + "+".join(p.name for p in self.parts) + f" ({method}weights {weights})"

    def fit_sha256(self) -> str:
        """Digest of everything that determines the output vectors."""
        digest = hashlib.sha256()
        head = {"method": self.method, "weights": [float(w) for w in self.weights],
                "parts": [{"name": p.name, "fingerprint": p.to_dict()["fingerprint"]} for p in self.parts]}
        digest.update(json.dumps(head, sort_keys=True).encode())
        for cols in self.columns:
            digest.update(np.ascontiguousarray(cols, dtype="<i8").tobytes())
            digest.update(b"|")
        return digest.hexdigest()

    def combine(self, part_vectors: Sequence[np.ndarray]) -> np.ndarray:
        """Combined unit vectors from each part's full-size vectors (rows aligned across parts).

        Raises:
            ValueError: Wrong number of parts, or a part of the wrong size.
        """
        if len(part_vectors) != len(self.parts):
            raise ValueError(f"expected vectors of {len(self.parts)} parts, got {len(part_vectors)}")
        selected = []
        for part, cols, vectors in zip(self.parts, self.columns, part_vectors):
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[1] != part.dim:
                raise ValueError(f"part {part.name} vectors must have shape (n, {part.dim}), got {vectors.shape}")
            selected.append(vectors[:, cols])
        return combine(selected, self.weights, self.method)

    # ----- saving and loading -------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the model to ``folder`` (created); ``ensemble.json`` last, so a crash leaves the old one."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        part_entries = []
        for i, (part, cols) in enumerate(zip(self.parts, self.columns)):
            file = f"part-{i}-columns.npy"
            write_npy(folder / file, np.asarray(cols, dtype=np.int64))
            part_entries.append({**part.to_dict(), "columns_file": file, "n_columns": int(cols.size)})
        write_json(folder / MODEL_FILE, {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "weights": [float(w) for w in self.weights],
            "dim": self.dim,
            "parts": part_entries,
            "fit_sha256": self.fit_sha256(),
            "info": self.info,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        logger.info("saved %s (%d-d) to %s", self.label, self.dim, folder)
        return folder

    @classmethod
    def is_model_dir(cls, folder: str | Path) -> bool:
        return (Path(folder) / MODEL_FILE).is_file()

    @classmethod
    def load(cls, folder: str | Path) -> EnsembleModel:
        """Read a model saved by :meth:`save`.

        Raises:
            FileNotFoundError: ``folder`` holds no ``ensemble.json``.
            ValueError: The files are malformed or do not match the recorded fit hash.
        """
        folder = Path(folder)
        path = folder / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} holds no fitted ensemble ({MODEL_FILE}); "
                                    "make one with `clothsim fit-ensemble`")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            if meta.get("format_version") != FORMAT_VERSION:
                raise DataError(f"format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
            parts = tuple(PartSpec(p["name"], p["weights_source"], p["fingerprint"]) for p in meta["parts"])
            columns = tuple(np.load(folder / p["columns_file"]).astype(np.int64) for p in meta["parts"])
            model = cls(parts, columns, tuple(meta["weights"]), meta["method"], meta.get("info", {}))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: malformed ensemble file ({exc!r})") from exc
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from exc
        if model.fit_sha256() != meta.get("fit_sha256"):
            raise DataError(f"{path}: fit_sha256 does not match the saved columns and weights; refit the ensemble")
        return model
