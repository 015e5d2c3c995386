"""The encoder contract: an image-to-vector model that carries its own preprocessing.

Callers never guess input sizes or normalisation: they take ``encoder.transform`` (PIL image in,
whatever the encoder's ``embed`` expects out), batch its outputs with the default collate, and call
``encoder.embed(batch)``. Everything that runs the network sits behind ``embed``, so another runtime
(ONNX Runtime, a GPU) can replace eager torch without touching callers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a network input, fixed by the weights it was trained with.

    Attributes:
        input_size: Side of the square tensor fed to the network.
        resize_size: The shorter image side is resized to this before the centre crop.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by after the mean.
        interpolation: ``"bilinear"`` or ``"bicubic"``.
    """

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def build_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """A torchvision transform: RGB PIL image -> normalised ``(3, input_size, input_size)`` tensor."""
        from torchvision import transforms

        modes = {
            "bilinear": transforms.InterpolationMode.BILINEAR,
            "bicubic": transforms.InterpolationMode.BICUBIC,
        }
        if self.interpolation not in modes:
            raise ValueError(f"interpolation must be one of {sorted(modes)}, got {self.interpolation!r}")
        return transforms.Compose(
            [
                transforms.Resize(self.resize_size, interpolation=modes[self.interpolation]),
                transforms.CenterCrop(self.input_size),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Encoder(ABC):
    """An image encoder producing L2-normalised float32 vectors of size ``dim``.

    Subclasses set ``name``, ``dim``, ``weights_id`` (a content hash or a torchvision weights tag, so a
    store made with other weights is detected as stale) and either ``preprocessing`` or their own
    ``transform``.
    """

    name: str
    dim: int
    weights_id: str
    preprocessing: Preprocessing | None = None
    device: torch.device = torch.device("cpu")
    # Which runtime runs it (set by create_encoder); not part of the fingerprint: runtimes agree.
    runtime: str = "torch"

    @property
    def input_size(self) -> int:
        if self.preprocessing is None:
            raise AttributeError(f"encoder {self.name!r} has no single input size")
        return self.preprocessing.input_size

    @property
    def transform(self) -> Callable[[Image.Image], Any]:
        """PIL RGB image -> one batch element for :meth:`embed`."""
        if self.preprocessing is None:
            raise NotImplementedError(f"encoder {self.name!r} must define its own transform")
        return self.preprocessing.build_transform()

    @abstractmethod
    def embed(self, batch: Any) -> np.ndarray:
        """Encode a collated batch of ``transform`` outputs.

        Returns:
            ``(batch_size, dim)`` float32 array, each row L2-normalised.
        """

    @property
    def decode_min_side(self) -> int | None:
        """The short side below which decoding must not shrink an image (see ``load_image(min_side=)``):
        the resize size of the preprocessing, or ``None`` to decode at full size."""
        return self.preprocessing.resize_size if self.preprocessing is not None else None

    def export_module(self) -> torch.nn.Module | None:
        """The whole network as one module for other runtimes (ONNX), or ``None`` if it has none.

        The module maps a float32 ``(N, 3, H, W)`` batch of :attr:`transform` outputs to ``(N, dim)``
        vectors whose L2-normalised rows are exactly what :meth:`embed` returns.
        """
        return None

    def with_parts(self, convert: Callable[["Encoder"], "Encoder"]) -> "Encoder | None":
        """For an encoder made of other encoders (an ensemble): the same encoder with each part replaced
        by ``convert(part)``, so a runtime can run the parts; ``None`` for a plain encoder."""
        return None

    def fingerprint(self) -> dict[str, Any]:
        """What makes two encoders' vectors comparable; stamped on every feature store."""
        return {
            "encoder": self.name,
            "weights": self.weights_id,
            "dim": int(self.dim),
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
        }

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Convenience for a handful of in-memory images; use ``clothsim.features`` for catalogues."""
        from torch.utils.data import default_collate

        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        tf = self.transform
        return self.embed(default_collate([tf(img.convert("RGB")) for img in images]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, weights={self.weights_id!r})"


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32; zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, eps)
