"""The torchvision CNNs and EfficientNet-Lite0 as torch networks (the ``torch`` extra).

Each encoder is the trunk of an ImageNet classifier (classifier removed), globally average-pooled and
L2-normalised. They differ only in how the trunk is built and where the official weights come from.
Their plug-ins (:mod:`clothsim.encoders.builtin`) import this module only when a network is built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.models import WeightsEnum
from torchvision.models.feature_extraction import create_feature_extractor

from clothsim.encoders import efficientnet_lite as lite
from clothsim.encoders.base import Preprocessing
from clothsim.encoders.torch_cnn import TorchCNNEncoder
from clothsim.encoders.weights import (
    build_from_state,
    build_seeded,
    download_to_cache,
    file_digest,
    load_weights,
    materialize_leftovers,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchvisionCNN:
    """How to make one torchvision classifier into an encoder.

    Attributes:
        name: Registry name.
        dim: Channels of the trunk's output.
        official: The torchvision weights used for ``weights=None``; they also fix the preprocessing.
        build: Builds the whole classifier, randomly initialised.
        trunk: Takes the classifier, returns the module producing the last conv feature map.
        classifier_prefixes: State-dict prefixes of the parts embeddings do not use.
        trunk_prefix: Prefix a trunk-only state dict may leave out (``"features."`` for VGG).
    """

    name: str
    dim: int
    official: WeightsEnum
    build: Callable[[], nn.Module]
    trunk: Callable[[nn.Module], nn.Module]
    classifier_prefixes: tuple[str, ...]
    trunk_prefix: str = ""

    @property
    def preprocessing(self) -> Preprocessing:
        preset = self.official.transforms()
        return Preprocessing(
            input_size=int(preset.crop_size[0]),
            resize_size=int(preset.resize_size[0]),
            mean=tuple(preset.mean),
            std=tuple(preset.std),
            interpolation=preset.interpolation.value,
        )


class _SingleNode(nn.Module):
    """Unwraps the one-entry dict returned by a torchvision feature extractor."""

    def __init__(self, extractor: nn.Module, key: str) -> None:
        super().__init__()
        self.extractor = extractor
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)[self.key]


def _node_trunk(node: str) -> Callable[[nn.Module], nn.Module]:
    def take(model: nn.Module) -> nn.Module:
        # The encoder only ever runs in eval mode; Inception's train-mode graph differs (auxiliary
        # head), which torchvision would otherwise warn about.
        extractor = create_feature_extractor(
            model.eval(), return_nodes={node: "fmap"}, suppress_diff_warning=True
        )
        return _SingleNode(extractor, "fmap")

    return take


def _weights_hint(name: str) -> str:
    return (
        f"; or pass --weights PATH (create_encoder({name!r}, weights=PATH)) naming a local state-dict "
        f"file of {name}, or --weights random"
    )


def build_torchvision_encoder(
    spec: TorchvisionCNN, weights: str | Path | None, device: str
) -> TorchCNNEncoder:
    """Build ``spec``'s encoder with official, random or local-file weights (see ``create_encoder``)."""

    def official() -> tuple[Path, str]:
        return download_to_cache(spec.official.url, hint=_weights_hint(spec.name)), str(spec.official)

    state, weights_id, source = load_weights(weights, official)
    if state is None:
        model = build_seeded(spec.build)
    else:
        model = build_from_state(
            spec.build,
            state,
            source=source,
            ignore_prefixes=spec.classifier_prefixes,
            trunk_prefix=spec.trunk_prefix,
        )
    trunk = spec.trunk(model.eval())
    materialize_leftovers(trunk)
    logger.debug("built %s with weights %s from %s", spec.name, weights_id, source)
    return TorchCNNEncoder(spec.name, spec.dim, spec.preprocessing, trunk, weights_id, device)


VGG16 = TorchvisionCNN(
    name="vgg16",
    dim=512,
    official=models.VGG16_Weights.IMAGENET1K_V1,
    build=lambda: models.vgg16(weights=None),
    # ``features`` ends with the fifth max-pool: (N, 512, 7, 7) at 224.
    trunk=lambda model: model.features,
    classifier_prefixes=("classifier.",),
    trunk_prefix="features.",
)
RESNET50 = TorchvisionCNN(
    name="resnet50",
    dim=2048,
    # V1 (plain training recipe) rather than V2: the classic features that retrieval work builds on,
    # with the classic 256 -> 224 preprocessing.
    official=models.ResNet50_Weights.IMAGENET1K_V1,
    build=lambda: models.resnet50(weights=None),
    trunk=_node_trunk("layer4"),
    classifier_prefixes=("fc.",),
)
INCEPTION_V3 = TorchvisionCNN(
    name="inception_v3",
    dim=2048,
    official=models.Inception_V3_Weights.IMAGENET1K_V1,
    # As torchvision builds it for these weights: they expect (x - 0.5) / 0.5 inputs, and
    # transform_input converts the ImageNet-normalised tensor into that inside the network.
    # aux_logits=True so the official file's AuxLogits keys have somewhere to go (then ignored).
    build=lambda: models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=True),
    trunk=_node_trunk("Mixed_7c"),
    classifier_prefixes=("fc.", "AuxLogits."),
)


def build_efficientnet_lite0(weights: str | Path | None, device: str) -> lite.EfficientNetLite0Encoder:
    """Build the default encoder with packaged (``None``), random or local-file weights."""

    def official() -> tuple[Path, str]:
        path = lite.packaged_weights_path()
        return path, file_digest(path)

    state, weights_id, source = load_weights(weights, official)
    if state is None:
        model = build_seeded(lite.EfficientNetLite0)
        has_classifier = True
    else:
        model = build_from_state(lite.EfficientNetLite0, state, source=source, ignore_prefixes=("_fc.",))
        # The classifier only serves ``classify``; a trunk-only file, or one fine-tuned to other
        # classes, still gives a working encoder.
        fc = {k.removeprefix("_fc."): v for k, v in state.items() if k.startswith("_fc.")}
        reference = model._fc.state_dict()
        has_classifier = fc.keys() == reference.keys() and all(fc[k].shape == reference[k].shape for k in fc)
        if has_classifier:
            model._fc.load_state_dict({k: v.float() for k, v in fc.items()}, assign=True)
        else:
            logger.info("%s: no 1000-class _fc weights; classify() is unavailable", source)
    trunk = lite.Lite0Trunk(model)
    materialize_leftovers(trunk)
    return lite.EfficientNetLite0Encoder(trunk, weights_id, has_classifier, device)
