"""Encoder options as encoder families: generalised-mean pooling (``gem:``) and test-time flip (``flip:``).

They wrap another encoder by name, so they compose and go wherever an encoder name goes (index, search,
evaluate, serve, Ray, both runtimes)::

    gem:efficientnet_lite0          GeM pooling, p = 3, instead of the average
    gem:4:vgg16                     GeM with p = 4
    flip:efficientnet_lite0         each image averaged with its mirror image
    flip:gem:efficientnet_lite0     both
    flip:tuned:model/               flip over a tuned encoder

The wrapper's name is part of the fingerprint, so an index built with one option is never searched with
vectors made without it. Each wrapper exports one network (the inner one plus its pooling or its mirror
branch), so ONNX Runtime runs it whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from clothsim.defaults import DEFAULT_GEM_P
from clothsim.encoders.base import Encoder, l2_normalize
from clothsim.errors import UsageError



def gem_pool(fmap: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    """``(N, C, h, w)`` -> ``(N, C)``: ``(mean(x^p))^(1/p)`` over the spatial positions (p = 1 is the
    average, large p tends to the maximum), on maps clamped at ``eps`` (GeM is defined on non-negative
    maps). Computed relative to each channel's maximum, so x^p cannot overflow float32 at large p."""
    fmap = fmap.clamp(min=eps)
    peak = fmap.amax(dim=(2, 3), keepdim=True)
    return (fmap / peak).pow(p).mean(dim=(2, 3)).pow(1.0 / p) * peak[:, :, 0, 0]


class GeMPooledTrunk(nn.Module):
    """``(N, 3, H, W)`` -> ``(N, C)``: a trunk's feature map, GeM-pooled (:func:`gem_pool`)."""

    def __init__(self, trunk: nn.Module, p: float) -> None:
        super().__init__()
        self.trunk, self.p = trunk, float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem_pool(self.trunk(x), self.p)


class FlipAveraged(nn.Module):
    """The unit vectors of an image and of its mirror image, added (normalising the sum is the caller's)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = nn.functional.normalize(self.inner(x), dim=1)
        b = nn.functional.normalize(self.inner(torch.flip(x, dims=[3])), dim=1)
        return a + b


class _Wrapper(Encoder):
    """Shared plumbing: the inner encoder's preprocessing, weights and device."""

    def __init__(self, name: str, inner: Encoder) -> None:
        self.name = name
        self.inner = inner
        self.dim = inner.dim
        self.weights_id = inner.weights_id
        self.preprocessing = inner.preprocessing
        self.device = inner.device

    @property
    def transform(self) -> Callable[[Any], Any]:
        return self.inner.transform

    @property
    def decode_min_side(self) -> int | None:
        return self.inner.decode_min_side


class GeMEncoder(_Wrapper):
    """A CNN encoder whose feature map is GeM-pooled (order ``p``) instead of averaged."""

    def __init__(self, inner: Encoder, p: float = DEFAULT_GEM_P) -> None:
        if not hasattr(inner, "feature_maps") or not hasattr(inner, "trunk"):
            raise UsageError(f"gem: needs a CNN encoder with a feature map (vgg16, resnet50, inception_v3, "
                             f"efficientnet_lite0, ...), not {inner.name!r}")
        # Short names for the usual exponents (gem:3:...), exact ones otherwise: two exponents, two names.
        shown = f"{p:g}" if float(f"{p:g}") == float(p) else repr(float(p))
        super().__init__(f"gem:{shown}:{inner.name}", inner)
        self.p = float(p)
        self._module = GeMPooledTrunk(inner.trunk, self.p).eval()

    def export_module(self) -> nn.Module:
        return self._module

    def embed(self, batch: Any) -> np.ndarray:
        fmap = self.inner.feature_maps(batch)
        with torch.inference_mode():
            pooled = gem_pool(fmap, self.p)
        return l2_normalize(pooled.float().cpu().numpy())

    def fingerprint(self) -> dict[str, Any]:
        return {**self.inner.fingerprint(), "encoder": self.name, "gem_p": self.p}


class FlipEncoder(_Wrapper):
    """Any encoder, with each image's vector averaged with its horizontally mirrored image's."""

    def __init__(self, inner: Encoder) -> None:
        super().__init__(f"flip:{inner.name}", inner)

    def export_module(self) -> nn.Module | None:
        module = self.inner.export_module()
        return None if module is None else FlipAveraged(module).eval()

    def with_parts(self, convert: Callable[[Encoder], Encoder]) -> Encoder | None:
        converted = self.inner.with_parts(convert)
        return None if converted is None else FlipEncoder(converted)

    def embed(self, batch: Any) -> np.ndarray:
        if _batch_size(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(self.inner.embed(batch) + self.inner.embed(_mirror(batch)))

    def fingerprint(self) -> dict[str, Any]:
        return {**self.inner.fingerprint(), "encoder": self.name, "flip": True}


def _mirror(batch: Any) -> Any:
    """The batch with every image mirrored left-right; an ensemble's batch is a tuple, one per part."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(_mirror(part) for part in batch)
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    return torch.flip(batch, dims=[3])


def _batch_size(batch: Any) -> int:
    return _batch_size(batch[0]) if isinstance(batch, (tuple, list)) else int(batch.shape[0])


def _inner(spec: str, weights: str | Path | None, device: str) -> Encoder:
    from clothsim.encoders.factory import build_network

    # The network alone: the runtime chosen for the wrapper runs the whole exported network.
    return build_network(spec, weights=weights, device=device)


def build_gem(spec: str, weights: str | Path | None, device: str) -> Encoder:
    """The ``gem:`` family's encoder: ``gem:NAME`` (p = 3) or ``gem:P:NAME``."""
    head, _, rest = spec.partition(":")
    p = DEFAULT_GEM_P
    if _is_number(head):
        if not rest:
            raise UsageError(f"gem:{head}: name the encoder after the exponent, e.g. gem:{head}:efficientnet_lite0")
        p, spec = float(head), rest
    if not 0.5 <= p <= 20:
        raise UsageError(f"gem: the exponent p must be within 0.5 and 20, not {p:g}")
    return GeMEncoder(_inner(spec, weights, device), p)


def build_flip(spec: str, weights: str | Path | None, device: str) -> Encoder:
    """The ``flip:`` family's encoder: ``flip:NAME`` averages each image with its mirror image."""
    return FlipEncoder(_inner(spec, weights, device))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
