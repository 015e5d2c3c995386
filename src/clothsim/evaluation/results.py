"""What a comparison run produced: one result per encoder, the encoders skipped, the figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clothsim.evaluation.instance import InstanceResult
from clothsim.evaluation.labels import LabelResult
from clothsim.metrics import RetrievalReport


@dataclass
class BackendResult:
    """One index backend's numbers on an encoder's gallery, measured against exact search.

    Attributes:
        backend: The backend name (``faiss-hnsw``, ``milvus``, ...).
        options: The options it was built and searched with.
        precision: ``{k: precision@k}`` of the backend's own rankings.
        map_at_k: mAP at the comparison's cut-off, from the backend's rankings.
        recall_at_10: Mean fraction of the exact top 10 that the backend's top 10 holds.
        build_s: Seconds to build (and save) the backend over the gallery.
        ms_per_query: Mean milliseconds per query, all queries sent as one batch.
        n_queries: Queries searched.
    """

    backend: str
    options: dict[str, Any]
    precision: dict[int, float]
    map_at_k: float
    recall_at_10: float
    build_s: float
    ms_per_query: float
    n_queries: int

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "options": dict(self.options),
                "precision": {str(k): float(v) for k, v in self.precision.items()},
                "map_at_k": float(self.map_at_k), "recall_at_10_vs_exact": float(self.recall_at_10),
                "build_s": float(self.build_s), "ms_per_query": float(self.ms_per_query),
                "n_queries": self.n_queries}


@dataclass
class EncoderResult:
    """One encoder's numbers on the comparison's query/gallery protocol.

    Attributes:
        name: The encoder name as requested (e.g. ``vgg16``, ``ensemble:/abs/folder``).
        label: Short display name (an ensemble shows its parts).
        dim: Vector size.
        report: Retrieval metrics.
        confusion: Top-1 confusion counts, rows/columns in ``categories`` order.
        categories: Category order of ``confusion``.
        images_per_second: Extraction throughput, or ``None`` when the stores do not record it.
        throughput_source: Where the throughput comes from (this run, a cached store, the parts).
        n_failed: Images that could not be decoded and were left out.
        stores: ``{role: store folder}`` (``queries``, ``gallery``, or ``all``).
        details: Encoder-specific facts (an ensemble's weights and parts).
        backends: Index backends measured on this encoder's gallery (empty unless asked for).
        instance: The instance guard's recall@1 (``None`` when it was left out).
        labels: Labels from a list against the true categories (``None`` unless asked for).
    """

    name: str
    label: str
    dim: int
    report: RetrievalReport
    confusion: np.ndarray
    categories: list[str]
    images_per_second: float | None
    throughput_source: str
    n_failed: int = 0
    stores: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    backends: list[BackendResult] = field(default_factory=list)
    instance: "InstanceResult | None" = None
    labels: "LabelResult | None" = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "dim": self.dim,
            "metrics": self.report.to_dict(),
            "confusion_top1": {"categories": list(self.categories), "counts": self.confusion.tolist()},
            "images_per_second": self.images_per_second,
            "throughput_source": self.throughput_source,
            "n_failed": self.n_failed,
            "stores": dict(self.stores),
            "details": self.details,
            "backends": [b.to_dict() for b in self.backends],
            "instance_guard": self.instance.to_dict() if self.instance is not None else None,
            "labels": self.labels.to_dict() if self.labels is not None else None,
        }


@dataclass(frozen=True)
class SkippedEncoder:
    """An encoder left out of the comparison, and why (e.g. its weights cannot be had here)."""

    name: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


@dataclass
class Comparison:
    """Everything the report shows.

    Attributes:
        data: What catalogue was evaluated.
        protocol: Human-readable protocol, e.g. ``"test split (372) against train split (3068)"``.
        leave_one_out: Whether queries were matched against the rest of the same set.
        query_split: Split of the queries (``None`` in leave-one-out).
        gallery_split: Split of the gallery (``None`` in leave-one-out).
        results: One entry per evaluated encoder, in the order asked.
        skipped: Encoders that could not be evaluated, with the reason.
        figures: ``{key: path relative to the report folder}`` of shared charts.
        grids: ``{encoder label: path}`` of result grids (same queries for every encoder).
        confusions: ``{encoder label: path}`` of confusion matrix charts.
        settings: Seeds, sample sizes, cut-offs.
    """

    data: str
    protocol: str
    leave_one_out: bool
    query_split: str | None
    gallery_split: str | None
    results: list[EncoderResult] = field(default_factory=list)
    skipped: list[SkippedEncoder] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    grids: dict[str, str] = field(default_factory=dict)
    confusions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def has_recall(self) -> bool:
        return any(r.report.recall_at_k is not None for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "protocol": self.protocol,
            "leave_one_out": self.leave_one_out,
            "query_split": self.query_split,
            "gallery_split": self.gallery_split,
            "results": [r.to_dict() for r in self.results],
            "skipped": [s.to_dict() for s in self.skipped],
            "figures": dict(self.figures),
            "grids": dict(self.grids),
            "confusions": dict(self.confusions),
            "settings": self.settings,
        }


def relative(path: Path, root: Path) -> str:
    """``path`` relative to the report folder, with forward slashes (for Markdown and HTML links)."""
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
