"""A fitted ensemble as an encoder: ``create_encoder("ensemble:<fitted folder>")``.

The encoder runs every part on its own preprocessing (its ``transform`` returns a tuple, one tensor
per part), then applies the fitted column selection and weights. Parts are rebuilt from the weights
recorded at fit time; ``weights`` may override them as ``"vgg16=PATH,resnet50=PATH"`` when files
moved, but the rebuilt parts must have the fingerprints the ensemble was fitted with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clothsim.encoders.base import Encoder
from clothsim.encoders.factory import build_network
from clothsim.ensemble.model import EnsembleModel
from clothsim.errors import StaleStoreError, UnknownEncoderError, UsageError
from clothsim.name_lists import parse_name_paths
from clothsim.features.store import fingerprint_mismatch

logger = logging.getLogger(__name__)

PREFIX = "ensemble"


class EnsembleTransform:
    """Applies each part's own transform to one image; a class (not a lambda) so workers can pickle it."""

    def __init__(self, transforms: Sequence[Callable[[Image.Image], Any]]) -> None:
        self.transforms = tuple(transforms)

    def __call__(self, image: Image.Image) -> tuple[Any, ...]:
        return tuple(transform(image) for transform in self.transforms)


class EnsembleEncoder(Encoder):
    """Several encoders combined by a fitted :class:`~clothsim.ensemble.model.EnsembleModel`.

    Args:
        name: Registry name (``ensemble:<absolute folder>``).
        model: The fitted model.
        parts: One built encoder per model part, in order, with the fitted fingerprints.
    """

    def __init__(self, name: str, model: EnsembleModel, parts: Sequence[Encoder]) -> None:
        if len(parts) != len(model.parts):
            raise ValueError(f"the ensemble has {len(model.parts)} parts, got {len(parts)} encoders")
        for spec, encoder in zip(model.parts, parts):
            diff = fingerprint_mismatch(spec.fingerprint, encoder.fingerprint())
            if diff:
                raise StaleStoreError(
                    f"{name}: part {spec.name} was fitted with another setup ({', '.join(diff)} differ: fitted "
                    f"weights {spec.fingerprint.get('weights')!r}, got {encoder.fingerprint().get('weights')!r}); "
                    "pass the weights it was fitted with or refit the ensemble")
        self.name = name
        self.model = model
        self.parts = tuple(parts)
        self.dim = model.dim
        self.fit_sha256 = model.fit_sha256()
        self.weights_id = f"fit-sha256:{self.fit_sha256[:16]}"
        self.preprocessing = None
        self.device = parts[0].device

    @property
    def label(self) -> str:
        return self.model.label

    @property
    def transform(self) -> EnsembleTransform:  # type: ignore[override]
        return EnsembleTransform([part.transform for part in self.parts])

    def embed(self, batch: Any) -> np.ndarray:
        """``(n, dim)`` unit vectors from a collated batch of :attr:`transform` tuples (a list per part)."""
        if not isinstance(batch, (list, tuple)) or len(batch) != len(self.parts):
            raise ValueError(f"{self.name}: expected a batch of {len(self.parts)} per-part inputs "
                             "(collated outputs of this encoder's transform)")
        return self.model.combine([part.embed(x) for part, x in zip(self.parts, batch)])

    @property
    def decode_min_side(self) -> int | None:
        sides = [part.decode_min_side for part in self.parts]
        return None if any(side is None for side in sides) else max(sides)

    def with_parts(self, convert: Callable[[Encoder], Encoder]) -> "EnsembleEncoder":
        """The same ensemble with each part converted (e.g. run by another runtime)."""
        return EnsembleEncoder(self.name, self.model, [convert(part) for part in self.parts])

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp["parts"] = [part.fingerprint() for part in self.parts]
        fp["fit_sha256"] = self.fit_sha256
        fp["method"] = self.model.method
        return fp


def parse_part_weights(weights: str | Path | None) -> dict[str, str]:
    """``"vgg16=PATH,resnet50=PATH"`` -> ``{"vgg16": "PATH", ...}``; ``None`` -> ``{}``.

    Raises:
        UsageError: An entry without ``NAME=``.
    """
    if weights is None:
        return {}
    return parse_name_paths(str(weights).split(","), option="ensemble weights")


def load_ensemble_encoder(folder: str | Path, weights: str | Path | None = None, device: str = "cpu") -> EnsembleEncoder:
    """Build the encoder of the ensemble fitted in ``folder`` (see the module docstring for ``weights``)."""
    folder = Path(folder).expanduser().resolve()
    model = EnsembleModel.load(folder)
    overrides = parse_part_weights(weights)
    unknown = set(overrides) - {p.name for p in model.parts}
    if unknown:
        raise UsageError(f"weights given for {sorted(unknown)}, which are not parts of {model.label}")
    parts = [build_network(p.name, weights=overrides.get(p.name, p.weights_source), device=device)
             for p in model.parts]
    return EnsembleEncoder(f"{PREFIX}:{folder}", model, parts)


def build_ensemble(spec: str, weights: str | Path | None, device: str) -> Encoder:
    """The ``ensemble:`` family's encoder: the ensemble fitted in the folder ``spec``."""
    if not EnsembleModel.is_model_dir(spec):
        raise UnknownEncoderError(
            f"ensemble:{spec}: {spec} is not a fitted ensemble folder; fit one with `clothsim fit-ensemble "
            f"--data DIR --parts vgg16,efficientnet_lite0 --out FOLDER`, then use ensemble:FOLDER")
    return load_ensemble_encoder(spec, weights, device)
