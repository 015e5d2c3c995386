"""The hub encoder families, as plug-ins declared in clothsim's ``pyproject.toml``
(``clothsim.encoder_families``): ``timm:NAME`` and ``open_clip:NAME[@PRETRAINED]``.

Like every plug-in, these import nothing heavy: timm, open_clip and torch (the ``hub`` extra) are
imported when a network is built, and a missing package fails there with the ``pip install`` line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clothsim.optional import require

if TYPE_CHECKING:
    from clothsim.encoders.base import Encoder


def _hub(package: str, prefix: str) -> None:
    require("torch", feature=prefix)
    require(package, extra="hub", feature=prefix)


class TimmFamily:
    """The ``timm:`` family: any timm model by its pooled features, ``timm:resnet50.a1_in1k``."""

    description = ("any timm model, pooled features, weights from the hub: timm:resnet50.a1_in1k, "
                   "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k")

    def create(self, spec: str, weights: str | Path | None, device: str) -> "Encoder":
        _hub("timm", "timm:")
        from clothsim.encoders.timm_network import build_timm_encoder

        return build_timm_encoder(spec, weights, device)


class OpenClipFamily:
    """The ``open_clip:`` family: OpenCLIP image vectors with a text tower in the same space."""

    description = ("OpenCLIP model with its text tower (text search, labels): open_clip:ViT-B-32@laion2b_s34b_b79k, "
                   "open_clip:hf-hub:Marqo/marqo-fashionSigLIP")

    def create(self, spec: str, weights: str | Path | None, device: str) -> "Encoder":
        _hub("open_clip", "open_clip:")
        from clothsim.encoders.open_clip_network import build_open_clip_encoder

        return build_open_clip_encoder(spec, weights, device)
