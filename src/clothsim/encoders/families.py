"""The built-in encoder families, as plug-ins declared in clothsim's ``pyproject.toml``
(``clothsim.encoder_families``): ``flip:``, ``gem:``, ``ensemble:``, ``tuned:`` and ``siamese:``.

Like the plain encoders' plug-ins, these import nothing heavy: each builds its network in torch (the
``torch`` extra) only when asked to. A model folder that training saved with its ONNX file
(``model.onnx``, named in ``config.json``) is ready to run as it is, so ``tuned:`` and ``siamese:`` models
search on ONNX Runtime without torch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from clothsim.encoders.spec import EncoderSpec
from clothsim.fileio import file_sha256
from clothsim.optional import require

if TYPE_CHECKING:
    from clothsim.encoders.base import Encoder

logger = logging.getLogger(__name__)

#: Where a model folder's ``config.json`` keeps the spec of its exported model file.
SPEC_KEY = "encoder_spec"


def _torch(feature: str) -> None:
    require("torch", feature=feature)


def ready_folder_spec(prefix: str, folder: str | Path, checkpoint: str) -> EncoderSpec | None:
    """The spec of a model folder's exported model file, when training saved one and the folder's
    checkpoint is still the one it was exported from; ``None`` otherwise (the network is then built)."""
    folder = Path(folder).expanduser().resolve()
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not a model folder, or damaged: building the network says which, precisely
    recorded = config.get(SPEC_KEY)
    if not recorded:
        return None
    spec = EncoderSpec.from_dict(recorded)
    path = spec.model_path(folder)
    checkpoint_path = folder / checkpoint
    if path is None or not path.is_file() or not checkpoint_path.is_file():
        return None
    if spec.identity.get("checkpoint_sha256") != file_sha256(checkpoint_path):
        logger.info("%s: the checkpoint changed since its model file was exported; building the network", folder)
        return None
    # Named by where the folder is now, as the network built from it would be.
    return replace(spec, name=f"{prefix}:{folder}").with_model(path, spec.model_sha256)  # type: ignore[arg-type]


class FlipFamily:
    """The ``flip:`` family: ``flip:NAME`` averages each image with its mirror image."""

    description = "test-time flip: each image averaged with its mirror image, flip:efficientnet_lite0"

    def create(self, spec: str, weights: str | Path | None, device: str) -> "Encoder":
        _torch("flip:")
        from clothsim.encoders.pooling import build_flip

        return build_flip(spec, weights, device)


class GeMFamily:
    """The ``gem:`` family: ``gem:NAME`` (p = 3) or ``gem:P:NAME``."""

    description = "GeM pooling over a CNN encoder's feature map: gem:efficientnet_lite0, gem:4:vgg16 (p, default 3)"

    def create(self, spec: str, weights: str | Path | None, device: str) -> "Encoder":
        _torch("gem:")
        from clothsim.encoders.pooling import build_gem

        return build_gem(spec, weights, device)


class EnsembleFamily:
    """The ``ensemble:`` family (a folder written by ``clothsim fit-ensemble``)."""

    description = "fitted weighted ensemble of encoders: ensemble:<folder from `clothsim fit-ensemble`>"

    def create(self, spec: str, weights: str | Path | None, device: str) -> "Encoder":
        _torch("ensemble:")
        from clothsim.ensemble.encoder import build_ensemble

        return build_ensemble(spec, weights, device)


class TunedFamily:
    """The ``tuned:`` family (a model folder written by ``clothsim train``)."""

    description = "a fine-tuned encoder folder (clothsim train), e.g. tuned:model/"

    def ready_spec(self, spec: str, weights: str | Path | None) -> EncoderSpec | None:
        return ready_folder_spec("tuned", spec, "tuned.pt") if weights is None else None

    def create(self, spec: str, weights: str | Path | None, device: str) -> "Encoder":
        _torch("tuned:")
        from clothsim.training.tuned_encoder import load_tuned_encoder

        return load_tuned_encoder(spec, weights=weights, device=device)


class SiameseFamily:
    """The ``siamese:`` family (a model folder written by ``clothsim train-siamese``)."""

    description = "a trained Siamese model folder (clothsim train-siamese), e.g. siamese:model/"

    def ready_spec(self, spec: str, weights: str | Path | None) -> EncoderSpec | None:
        return ready_folder_spec("siamese", spec, "siamese.pt") if weights is None else None

    def create(self, spec: str, weights: str | Path | None, device: str) -> "Encoder":
        _torch("siamese:")
        from clothsim.training.siamese_encoder import load_siamese_encoder

        return load_siamese_encoder(spec, weights=weights, device=device)
