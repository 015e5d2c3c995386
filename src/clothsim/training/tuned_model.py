"""The tuned network: a pretrained CNN cut in two, a pooling layer and a projection head.

A backbone is seen as a list of layers (EfficientNet-Lite0: the stem, its 16 MBConv blocks, the head
convolution; VGG16: each convolution with its ReLU and pooling). The network is cut at ``cut``: the
layers below are frozen and their outputs cached (they are computed once per view, not once per
epoch), the layers above run at every step; the last ``train_layers`` of them learn. Pooling (average
or GeM) and a projection head map the feature map to a unit vector of ``embedding_dim``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from clothsim.errors import UsageError

POOLINGS = ("avg", "gem", "max")
SUPPORTED_BACKBONES = ("efficientnet_lite0", "vgg16", "timm:NAME of a CNN whose stages run in a row (timm:resnet50, "
                       "timm:resnet18, ...)")


@dataclass(frozen=True)
class NetworkConfig:
    """The shape of a tuned network (what a model folder needs to rebuild it).

    Attributes:
        backbone: Registry name of the pretrained encoder (``efficientnet_lite0`` or ``vgg16``).
        cut: Index of the first layer above the frozen, cached part.
        train_layers: How many of the top layers learn (0: only pooling and head).
        pooling: ``"avg"``, ``"gem"`` (generalised mean) or ``"max"`` (the Siamese study's global max).
        gem_p: Initial (or fixed) GeM exponent.
        learn_p: Whether the GeM exponent learns.
        hidden_dim: Width of the head's hidden layer; 0 for a single linear projection.
        embedding_dim: Size of the output vectors.
        flip: Average the embedding with the horizontally flipped image's (test-time only).
    """

    backbone: str = "efficientnet_lite0"
    cut: int = 16
    train_layers: int = 1
    pooling: str = "gem"
    gem_p: float = 3.0
    learn_p: bool = True
    hidden_dim: int = 0
    embedding_dim: int = 256
    flip: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GeM(nn.Module):
    """Generalised-mean pooling ``(mean(x^p))^(1/p)`` over the spatial axes; p = 1 is average pooling."""

    def __init__(self, p: float = 3.0, learn: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Clamped: the maps are ReLU outputs, and a zero to a fractional power has no gradient.
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class AvgPool(nn.Module):
    """Global average pooling, ``(N, C, h, w) -> (N, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class MaxPool(nn.Module):
    """Global max pooling, ``(N, C, h, w) -> (N, C)`` (the original study's Siamese branch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


class ProjectionHead(nn.Module):
    """Pooled features -> embedding (a linear layer, or linear-ReLU-linear with ``hidden_dim``)."""

    def __init__(self, in_dim: int, embedding_dim: int, hidden_dim: int = 0) -> None:
        super().__init__()
        if hidden_dim > 0:
            self.net: nn.Module = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True),
                                                nn.Linear(hidden_dim, embedding_dim))
        else:
            self.net = nn.Linear(in_dim, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Stem(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = model._conv_stem, model._bn0, nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _HeadConv(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = model._conv_head, model._bn1, nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def backbone_layers(encoder: Any) -> tuple[list[nn.Module], int]:
    """A pretrained encoder's trunk as a list of layers (deep copies) and the last layer's channels.

    Raises:
        UsageError: the encoder is not one whose trunk can be cut into layers here.
    """
    trunk = getattr(encoder, "trunk", None)
    if encoder.name == "efficientnet_lite0" and trunk is not None and hasattr(trunk, "model"):
        model = copy.deepcopy(trunk.model).to(memory_format=torch.contiguous_format)
        layers = [_Stem(model), *model._blocks, _HeadConv(model)]
        return layers, int(model._conv_head.out_channels)
    if encoder.name == "vgg16" and isinstance(trunk, nn.Sequential):
        features = copy.deepcopy(trunk).to(memory_format=torch.contiguous_format)
        groups: list[list[nn.Module]] = []
        for module in features:
            if isinstance(module, nn.Conv2d) or not groups:
                groups.append([])
            groups[-1].append(module)
        return [nn.Sequential(*g) for g in groups], int(encoder.dim)
    if encoder.name.startswith("timm:") and getattr(encoder, "has_feature_map", False):
        return _timm_stages(encoder)
    raise UsageError(f"cannot fine-tune backbone {encoder.name!r}; supported: {', '.join(SUPPORTED_BACKBONES)}")


def _timm_stages(encoder: Any) -> tuple[list[nn.Module], int]:
    """A timm CNN cut at its stages: the stem (every module before the first stage), then each stage,
    as timm's ``feature_info`` names them. The cut is checked: the layers in a row must compute the
    model's own feature map, else the model is refused (its forward pass is not a plain sequence)."""
    model = copy.deepcopy(encoder.model).to(memory_format=torch.contiguous_format).cpu()
    stages = [info["module"] for info in getattr(model, "feature_info", [])]
    children = dict(model.named_children())
    named = [name for name in stages if name in children]
    if len(named) < 2:
        raise UsageError(f"cannot fine-tune backbone {encoder.name!r}: its stages are not top-level modules; "
                         f"supported: {', '.join(SUPPORTED_BACKBONES)}")
    order = list(children)
    last = order.index(named[-1])
    # timm's first feature_info entry is the stem's output (ResNet's act1); the stages follow it.
    stage_names = named[1:] if named[0] == stages[0] else named
    first_stage = order.index(stage_names[0])
    layers: list[nn.Module] = [nn.Sequential(*[children[n] for n in order[:first_stage]])]
    layers += [children[n] for n in order[first_stage:last + 1]]
    size = encoder.preprocessing.input_size
    with torch.no_grad():
        probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        expected = model.eval().forward_features(probe)
        found = nn.Sequential(*layers).eval()(probe)
    if found.shape != expected.shape or not torch.allclose(found, expected, atol=1e-4, rtol=1e-4):
        raise UsageError(f"cannot fine-tune backbone {encoder.name!r}: its forward pass is not a sequence of its "
                         f"stages; supported: {', '.join(SUPPORTED_BACKBONES)}")
    return layers, int(encoder.dim)


def check_cut(n_layers: int, cut: int, train_layers: int) -> None:
    """Raise :class:`UsageError` unless ``1 <= cut < n_layers`` and the trained layers lie above the cut."""
    if not 1 <= cut < n_layers:
        raise UsageError(f"the cut must lie between 1 and {n_layers - 1} (layers of the backbone), got {cut}")
    if not 0 <= train_layers <= n_layers - cut:
        raise UsageError(f"train_layers must be between 0 and {n_layers - cut} (the layers above the cache "
                         f"cut {cut}), got {train_layers}")


class TunedNetwork(nn.Module):
    """Cached lower output -> upper layers -> pooling -> projection -> unit vector.

    Args:
        upper: The backbone layers above the cut, in order.
        channels: Channels of the last upper layer.
        config: The network's shape.
    """

    def __init__(self, upper: list[nn.Module], channels: int, config: NetworkConfig) -> None:
        super().__init__()
        if config.pooling not in POOLINGS:
            raise UsageError(f"pooling must be one of {', '.join(POOLINGS)}, got {config.pooling!r}")
        self.config = config
        self.upper = nn.Sequential(*upper)
        self.pool: nn.Module = {"gem": lambda: GeM(config.gem_p, config.learn_p), "avg": AvgPool,
                                "max": MaxPool}[config.pooling]()
        self.head = ProjectionHead(channels, config.embedding_dim, config.hidden_dim)
        self.n_frozen_upper = len(upper) - config.train_layers
        for index, layer in enumerate(self.upper):
            layer.requires_grad_(index >= self.n_frozen_upper)

    def train(self, mode: bool = True) -> "TunedNetwork":
        super().train(mode)
        # BatchNorm statistics stay the pretrained ones: batches of a few classes are too small and too
        # skewed to re-estimate them, and eval-mode BN keeps training and inference the same function.
        for module in self.upper.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def features(self, lower: torch.Tensor) -> torch.Tensor:
        """Pooled upper features (before the head) of cached lower outputs."""
        x = lower
        if self.n_frozen_upper:
            with torch.no_grad():
                x = self.upper[: self.n_frozen_upper](x)
        x = self.upper[self.n_frozen_upper:](x)
        return self.pool(x)

    def forward(self, lower: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings of cached lower outputs ``(N, C, h, w)``."""
        return nn.functional.normalize(self.head(self.features(lower)), dim=1)


class TunedMembers(nn.Module):
    """Several tuned networks over the same lower output, trained apart (own seed, own loss), as one.

    Their unit embeddings are concatenated and scaled by ``1/sqrt(n)``: the result is a unit vector and
    the cosine of two images is the mean of the members' cosines. Members that learnt differently make
    different mistakes, so the mean ranks better than any one of them (docs/training.md has the figures).
    """

    def __init__(self, members: list[TunedNetwork]) -> None:
        super().__init__()
        if len(members) < 2:
            raise UsageError("an ensemble of tuned networks needs at least two members")
        self.members = nn.ModuleList(members)
        first = members[0].config
        self.member_config = first
        self.config = replace(first, embedding_dim=first.embedding_dim * len(members))

    def forward(self, lower: torch.Tensor) -> torch.Tensor:
        return torch.cat([member(lower) for member in self.members], dim=1) / math.sqrt(len(self.members))


class FullGraph(nn.Module):
    """Images ``(N, 3, H, W)`` -> unit embeddings: the frozen lower part then the tuned network (with the
    flip average when the config asks for it). This is what the ONNX runtime exports."""

    def __init__(self, lower: nn.Module, network: TunedNetwork) -> None:
        super().__init__()
        self.lower = lower
        self.network = network
        self.flip = network.config.flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(self.lower(x))
        if self.flip:
            out = nn.functional.normalize(out + self.network(self.lower(torch.flip(x, dims=[3]))), dim=1)
        return out
