"""Labels without labelling, scored: how often an encoder's text tower picks each photo's true category.

``clothsim index --label-with`` gives every item the label of a list whose text is closest to its photo.
Before trusting it on a catalogue without categories, it can be scored on one that has them: ``clothsim
evaluate --label-with LIST`` labels the query photos of each encoder that has a text tower with the same
prompts and reports the share whose label is their true category, overall and per category.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clothsim.encoders.base import Encoder
from clothsim.errors import UsageError
from clothsim.features.store import FeatureStore
from clothsim.zero_shot import LabelList, label_accuracy

logger = logging.getLogger(__name__)

#: ``--label-with categories``: the catalogue's own category names are the list.
CATEGORIES_AS_LABELS = "categories"


@dataclass
class LabelResult:
    """One encoder's labels from a list against the true categories.

    Attributes:
        accuracy: Share of photos whose best label is their category (``None`` when not measured).
        n: Photos labelled.
        per_category: ``{category: accuracy}``.
        labels: The list chosen from.
        prompt: How each label became a text.
        reason: Why it was not measured (an encoder without a text tower), else ``None``.
    """

    accuracy: float | None
    n: int
    labels: list[str]
    prompt: str
    per_category: dict[str, float] = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "n": self.n, "per_category": dict(self.per_category),
                "labels": list(self.labels), "prompt": self.prompt, "reason": self.reason}


def evaluate_labels(encoder: Encoder, store_dir: str | Path, labels: LabelList) -> LabelResult:
    """Label every photo of the store at ``store_dir`` (vectors made by ``encoder``) with its closest
    prompt of ``labels`` and score the labels against the photos' categories."""
    from clothsim.runtimes.onnx_text import OnnxTextEncoder

    try:
        spec = encoder.spec
    except (AttributeError, NotImplementedError):  # an encoder without one identity (an ensemble)
        spec = None
    if spec is None or not spec.has_text_tower:
        return LabelResult(None, 0, list(labels.labels), labels.prompt, reason="no text tower")
    try:
        text = OnnxTextEncoder(spec, threads=getattr(encoder, "threads", None))
    except UsageError as exc:
        return LabelResult(None, 0, list(labels.labels), labels.prompt, reason=str(exc))
    vectors, items = FeatureStore.open(store_dir).load_vectors()
    scored = label_accuracy(vectors, [item.record.category for item in items], text.encode(labels.prompts()),
                            list(labels.labels))
    logger.info("%s: labels from a list of %d, accuracy %.3f over %d photos", encoder.name, len(labels.labels),
                scored["accuracy"], scored["n"])
    return LabelResult(scored["accuracy"], scored["n"], list(labels.labels), labels.prompt,
                       per_category=scored["per_category"])
