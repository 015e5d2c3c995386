"""A trained Siamese model as an encoder: ``create_encoder("siamese:model/")``.

The encoder runs the base CNN the model was trained on (e.g. VGG16 conv5), then the Siamese branch,
and returns its L2-normalised embedding, so ``index``, ``search`` and ``evaluate`` work with it
unchanged. Because the embedding is unit-length, the index's cosine ranking is exactly the ranking
by the Euclidean distance the network was trained on; :func:`clothsim.training.distance.similarity_from_cosine`
turns a search score into the pair similarity that ``clothsim similarity`` prints.

``weights`` (``--weights``) names the base CNN's weights file when it moved since training; the
Siamese head always comes from the model folder. The fingerprint carries the base weights' id and
the checkpoint's SHA-256, so a store built with another (or a retrained) model is detected as stale.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clothsim.encoders.base import Encoder, l2_normalize
from clothsim.encoders.factory import build_network
from clothsim.training.checkpoint import load_model
from clothsim.training.distance import euclidean_distance, similarity_from_distance
from clothsim.training.model import SiameseNetwork
from clothsim.errors import UsageError

logger = logging.getLogger(__name__)


class SiameseEncoder(Encoder):
    """Base CNN feature maps -> Siamese branch -> unit-length embedding.

    Args:
        name: Registry name (``siamese:<absolute model folder>``).
        base: The base encoder; it must offer ``feature_maps(batch)``.
        model: The trained network.
        meta: The model folder's ``config.json`` (with the checkpoint hash).
        device: Torch device.
    """

    def __init__(self, name: str, base: Encoder, model: SiameseNetwork, meta: dict[str, Any],
                 device: str | torch.device = "cpu") -> None:
        if not hasattr(base, "feature_maps"):
            raise UsageError(f"base encoder {base.name!r} has no feature_maps(); a Siamese model needs a CNN "
                             "encoder such as vgg16")
        self.name = name
        self.base = base
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.meta = meta
        self.dim = int(model.config.embedding_dim)
        self.preprocessing = base.preprocessing
        self.threshold = float(meta.get("threshold", float("nan")))
        self.weights_id = f"{base.weights_id}+siamese-sha256:{meta['checkpoint_sha256'][:16]}"

    @property
    def transform(self):  # type: ignore[override]
        return self.base.transform

    def embed_tensor(self, batch: Any) -> torch.Tensor:
        """Embeddings as a float32 tensor on the CPU (unit rows)."""
        maps = self.base.feature_maps(batch)
        with torch.no_grad():
            return self.model.embed(maps.to(self.device, torch.float32)).float().cpu()

    def embed(self, batch: Any) -> np.ndarray:
        """``(N, dim)`` float32 unit-length Siamese embeddings of a batch of ``transform`` outputs."""
        if hasattr(batch, "shape") and batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Already unit-length; normalising again only removes float rounding for the cosine index.
        return l2_normalize(self.embed_tensor(batch).numpy())

    def export_module(self) -> torch.nn.Module | None:
        """Base CNN trunk then the Siamese branch, in one module (for the ONNX runtime)."""
        trunk = getattr(self.base, "trunk", None)
        return None if trunk is None else _SiameseGraph(trunk, self.model)

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp["base_encoder"] = self.base.name
        fp["checkpoint_sha256"] = self.meta["checkpoint_sha256"]
        return fp

    def pair_similarity(self, a: Image.Image, b: Image.Image) -> tuple[float, float]:
        """``(similarity, distance)`` of two images, as the network scores the pair."""
        from torch.utils.data import default_collate

        tf = self.transform
        emb = self.embed_tensor(default_collate([tf(a.convert("RGB")), tf(b.convert("RGB"))]))
        distance = float(euclidean_distance(emb[:1], emb[1:])[0])
        return float(similarity_from_distance(distance)), distance


class _SiameseGraph(torch.nn.Module):
    def __init__(self, trunk: torch.nn.Module, model: SiameseNetwork) -> None:
        super().__init__()
        self.trunk = trunk
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(self.trunk(x))


def load_siamese_encoder(model_dir: str | Path, weights: str | Path | None = None,
                         device: str = "cpu") -> SiameseEncoder:
    """Build the encoder of a model folder written by ``clothsim train-siamese``.

    Args:
        model_dir: The model folder.
        weights: The base CNN's weights file, if not the one recorded at training time.
        device: Torch device.

    Raises:
        FileNotFoundError: no model folder at ``model_dir``.
        ValueError: ``weights`` are not the base weights the model was trained on.
    """
    folder = Path(model_dir).expanduser().resolve()
    model, meta = load_model(folder)
    base_weights = weights if weights is not None else meta.get("base_weights")
    base = build_network(meta["base_encoder"], weights=base_weights, device=device)
    trained_on = meta.get("base_fingerprint", {}).get("weights")
    if trained_on is not None and trained_on != base.weights_id:
        raise UsageError(f"{folder / 'config.json'}: the model was trained on {meta['base_encoder']} weights "
                         f"{trained_on}, but the weights given are {base.weights_id}; pass --weights with the "
                         "original file")
    return SiameseEncoder(f"siamese:{folder}", base, model, meta, device)


def read_model_summary(model_dir: str | Path) -> dict[str, Any]:
    """The model folder's ``config.json`` as a dict (no weights loaded)."""
    return json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
