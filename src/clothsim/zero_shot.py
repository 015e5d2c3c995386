"""Labels without labelling: each catalogue item gets its best label from a list, through the text tower.

With an encoder that has a text tower (an ``open_clip:`` model), a list of words ("dress, shirt, ...",
or "red, blue, ..." for a colour) is encoded once as prompts ("a photo of a dress"), and each indexed
photo takes the label whose text vector is closest to its image vector (cosine), with that cosine as its
score. The label is stored as the item's category (for items that have none: a catalogue without
categories) or as a named attribute (``colour=red``), with its score beside it (``colour:score=0.2874``),
in the index's own metadata: the category then filters searches like any category, and both come back
with every hit. Labelling reads the stored vectors, so it encodes no photo again.

Running the same ``clothsim index ... --label-with`` after the catalogue changed keeps the labels of the
items that did not change (:func:`carry_labels`) and labels the new ones.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from clothsim.defaults import DEFAULT_LABEL_PROMPT
from clothsim.data.records import CatalogRecord
from clothsim.errors import DataError, UsageError

if TYPE_CHECKING:
    from clothsim.similarity_index import SimilarityIndex

logger = logging.getLogger(__name__)

CATEGORY = "category"
#: Vectors scored together when labelling (bounded memory whatever the catalogue's size).
LABEL_BLOCK = 8192

__all__ = ["CATEGORY", "DEFAULT_LABEL_PROMPT", "LabelList", "LabelReport", "carry_labels", "label_accuracy",
           "label_index", "read_label_list"]


def read_label_list(source: str) -> list[str]:
    """The labels of ``--label-with``: a text file (one label a line, ``#`` comments) or a comma-separated
    list (``"dress,shirt,shoes"``).

    Raises:
        UsageError: a file that does not exist, an empty list, or a label given twice.
    """
    path = Path(source).expanduser()
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        labels = [line.split("#", 1)[0].strip() for line in lines]
    elif path.suffix in (".txt", ".csv", ".list") or "/" in source:
        raise UsageError(f"label file {source} does not exist (give a file, or labels separated by commas)")
    else:
        labels = [part.strip() for part in source.split(",")]
    labels = [label for label in labels if label]
    if not labels:
        raise UsageError(f"no labels in {source!r}")
    repeated = [label for label, n in Counter(labels).items() if n > 1]
    if repeated:
        raise UsageError(f"labels given more than once: {', '.join(repeated[:5])}")
    return labels


@dataclass(frozen=True)
class LabelList:
    """The labels to choose from, how each becomes a text, and where the chosen one is stored.

    Attributes:
        labels: The words to choose from.
        field: ``"category"`` (for items without one) or an attribute name such as ``"colour"``.
        prompt: How a label becomes the text encoded (``{}`` stands for the label).
    """

    labels: tuple[str, ...]
    field: str = CATEGORY
    prompt: str = DEFAULT_LABEL_PROMPT

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        if not self.labels:
            raise UsageError("a label list needs at least one label")
        if "{}" not in self.prompt:
            raise UsageError(f"the label prompt must contain {{}} where the label goes, got {self.prompt!r}")
        if not self.field or any(c in self.field for c in "=:,") or self.field != self.field.strip():
            raise UsageError(f"the label field must be a plain name such as colour, got {self.field!r}")

    def prompts(self) -> list[str]:
        return [self.prompt.replace("{}", label) for label in self.labels]


@dataclass
class LabelReport:
    """What labelling did: how many items got each label, how many changed, how many kept a category."""

    field: str
    counts: dict[str, int] = field(default_factory=dict)
    n_labelled: int = 0
    n_changed: int = 0
    n_kept: int = 0

    def summary(self) -> str:
        shown = ", ".join(f"{label} {n}" for label, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        kept = f"; {self.n_kept} kept their own category" if self.n_kept else ""
        return f"labelled {self.n_labelled} items by {self.field} ({shown}); {self.n_changed} changed{kept}"


def _score_key(name: str) -> str:
    return f"{name}:score="


def _is_labelled_by_us(record: CatalogRecord, name: str) -> bool:
    return any(a.startswith(_score_key(name)) for a in record.attributes)


def with_label(record: CatalogRecord, name: str, label: str, score: float) -> CatalogRecord:
    """``record`` with ``label`` (and its score) stored under ``name``; a record whose own category is
    given keeps it when ``name`` is the category."""
    if name == CATEGORY and record.category is not None and not _is_labelled_by_us(record, name):
        return record
    kept = [a for a in record.attributes if not a.startswith(_score_key(name)) and not a.startswith(f"{name}=")]
    added = [f"{name}:score={score:.4f}"] if name == CATEGORY else [f"{name}={label}", f"{name}:score={score:.4f}"]
    category = label if name == CATEGORY else record.category
    return replace(record, category=category, attributes=tuple(kept + added))


def best_labels(image_vectors: np.ndarray, text_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each unit image vector, the index of the closest unit text vector and its cosine."""
    scores = np.asarray(image_vectors, dtype=np.float32) @ np.asarray(text_vectors, dtype=np.float32).T
    best = np.argmax(scores, axis=1)
    return best, scores[np.arange(len(best)), best]


def label_index(index: "SimilarityIndex", labels: LabelList) -> LabelReport:
    """Give every live item of ``index`` its best label from ``labels`` (stored vectors, no photo
    encoded again); items whose label changed are rewritten in one commit, and the backend catches up.

    Raises:
        UsageError: the index's encoder has no text tower (the message says which encoders have one).
    """
    text_vectors = index.embed_text(labels.prompts())
    store = index.store
    ids = store.live_ids()
    report = LabelReport(labels.field)
    all_ids = store.all_ids()
    size, mtime = store.source_signatures()
    changed_ids: list[int] = []
    changed_records: list[CatalogRecord] = []
    sources: list[tuple[int, int] | None] = []
    counts: Counter[str] = Counter()
    for start in range(0, len(ids), LABEL_BLOCK):
        block = ids[start:start + LABEL_BLOCK]
        best, scores = best_labels(store.vectors_for(block), text_vectors)
        for item_id, record, code, score in zip(block, store.records_for(block), best, scores):
            new = with_label(record, labels.field, labels.labels[int(code)], float(score))
            if labels.field == CATEGORY and new is record:
                report.n_kept += 1
                continue
            counts[labels.labels[int(code)]] += 1
            if new != record:
                position = int(np.searchsorted(all_ids, item_id))
                changed_ids.append(int(item_id))
                changed_records.append(new)
                sources.append((int(size[position]), int(mtime[position])))
    report.counts = dict(counts)
    report.n_labelled = sum(counts.values())
    report.n_changed = len(changed_ids)
    if changed_ids:
        with store.transaction():
            store.append_rows_from(np.asarray(changed_ids, dtype=np.int64), changed_records, sources)
            store.delete(changed_ids)
        index.backend.refresh()
        index.backend.save()
    logger.info("%s", report.summary())
    return report


def carry_labels(records: Sequence[CatalogRecord], index_dir: str | Path, name: str) -> list[CatalogRecord]:
    """``records`` with the labels an earlier labelling stored in ``index_dir`` for the same paths, so a
    sync of the same catalogue leaves labelled items as they are (a changed file is re-encoded by the
    sync and labelled again after it)."""
    from clothsim.features.store import FeatureStore

    if not FeatureStore.exists(index_dir):
        return list(records)
    try:
        store = FeatureStore.open(index_dir)
    except (OSError, DataError, ValueError) as exc:  # a damaged index is the sync's to report and repair
        logger.info("labels of %s not carried over: %s", index_dir, exc)
        return list(records)
    labelled: dict[str, Any] = {}
    if store.total_rows:
        rows = store.metadata_table().select(["path", "category", "attributes"]).to_pylist()
        for row, live in zip(rows, store.live_mask()):
            attributes = row["attributes"] or []
            if live and any(a.startswith(_score_key(name)) for a in attributes):
                labelled[row["path"]] = row
    carried = []
    for record in records:
        row = labelled.get(record.path)
        if row is None or (name == CATEGORY and record.category is not None):
            carried.append(record)
            continue
        ours = [a for a in row["attributes"] if a.startswith(_score_key(name)) or a.startswith(f"{name}=")]
        kept = [a for a in record.attributes if a not in ours and not a.startswith(f"{name}=")]
        category = row["category"] if name == CATEGORY else record.category
        carried.append(replace(record, category=category, attributes=tuple(kept + ours)))
    return carried


def label_accuracy(image_vectors: np.ndarray, categories: Sequence[str], text_vectors: np.ndarray,
                   labels: Sequence[str]) -> dict[str, Any]:
    """How often the best label is the item's true category: overall and per category.

    Returns:
        ``{"accuracy", "n", "per_category": {category: accuracy}, "labels": [...]}``.
    """
    if len(image_vectors) != len(categories):
        raise ValueError(f"{len(image_vectors)} vectors but {len(categories)} categories")
    best, _ = best_labels(image_vectors, text_vectors)
    predicted = np.asarray([labels[int(i)] for i in best], dtype=object)
    truth = np.asarray(list(categories), dtype=object)
    right = predicted == truth
    per = {str(c): float(np.mean(right[truth == c])) for c in sorted(set(truth.tolist()))}
    return {"accuracy": float(np.mean(right)) if len(right) else float("nan"), "n": int(len(right)),
            "per_category": per, "labels": list(labels)}
