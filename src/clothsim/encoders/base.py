"""The encoder contract: an image-to-vector model that carries its own preprocessing and identity.

Callers never guess input sizes or normalisation: they take ``encoder.transform`` (PIL image in,
whatever the encoder's ``embed`` expects out; a float32 ``(3, H, W)`` array for the built-ins), batch
its outputs with :func:`collate`, and call ``encoder.embed(batch)``. Everything that runs the network
sits behind ``embed``, so ONNX Runtime, eager torch or a GPU can run it without touching callers, and
``encoder.spec`` says what the vectors are (see :mod:`clothsim.encoders.spec`).

Nothing here imports torch: the encoders that run in torch live in the ``torch`` extra.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from clothsim.encoders.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from clothsim.encoders.spec import EncoderSpec

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Encoder", "Preprocessing", "collate", "l2_normalize"]


class Encoder(ABC):
    """An image encoder producing L2-normalised float32 vectors of size ``dim``.

    Subclasses set ``name``, ``dim``, ``weights_id`` (a content hash or a weights tag, so a store made
    with other weights is detected as stale) and either ``preprocessing`` or their own ``transform``.
    Their :attr:`spec` then follows from :meth:`fingerprint`; an encoder that runs a model file returns
    a spec that names it.
    """

    name: str
    dim: int
    weights_id: str
    preprocessing: Preprocessing | None = None
    device: Any = "cpu"
    # Which runtime runs it (set by the factory); not part of the identity: runtimes agree.
    runtime: str = "torch"
    # Where the weights came from (set by the factory), so the network can be built again.
    weights_source: str | None = None

    @property
    def spec(self) -> EncoderSpec:
        """What the vectors are: identity, preprocessing, precision and (where there is one) the model
        file that is executed."""
        return EncoderSpec.from_fingerprint(self.fingerprint(), weights_source=self.weights_source)

    @property
    def input_size(self) -> int:
        if self.preprocessing is None:
            raise AttributeError(f"encoder {self.name!r} has no single input size")
        return self.preprocessing.input_size

    @property
    def transform(self) -> Callable[[Image.Image], Any]:
        """PIL RGB image -> one batch element for :meth:`embed` (picklable, so decoding processes can
        run it)."""
        if self.preprocessing is None:
            raise NotImplementedError(f"encoder {self.name!r} must define its own transform")
        return self.preprocessing

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

    def export_module(self) -> Any:
        """The whole network as one torch module for export to ONNX, or ``None`` if it has none.

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

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Vectors of in-memory images, ``batch_size`` at a time. For files and catalogues use
        :meth:`clothsim.SimilarityIndex.embed` or :func:`clothsim.features.extract_features`, which
        decode as they go."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        tf = self.transform
        out = [self.embed(collate([tf(img.convert("RGB")) for img in images[lo:lo + batch_size]]))
               for lo in range(0, len(images), batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, weights={self.weights_id!r})"


def collate(items: Sequence[Any]) -> Any:
    """Stack ``transform`` outputs into one batch: arrays into an ``(N, ...)`` array, tuples (an
    ensemble's per-part inputs) part by part, torch tensors (a custom transform's) with torch."""
    if len(items) == 0:
        raise ValueError("collate needs at least one item")
    first = items[0]
    if isinstance(first, (tuple, list)):
        return tuple(collate([item[i] for item in items]) for i in range(len(first)))
    if type(first).__module__.split(".")[0] == "torch":
        import torch  # only reached for a transform that already returned torch tensors

        return torch.stack(list(items))
    return np.stack([np.asarray(item) for item in items])


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32; zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, eps)
