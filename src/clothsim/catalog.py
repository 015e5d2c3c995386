"""The Python API in one object: build a searchable catalogue on disk, open it, search it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from clothsim.data.records import CatalogRecord
from clothsim.encoders.base import Encoder
from clothsim.encoders.registry import DEFAULT_ENCODER, create_encoder
from clothsim.features.extract import ExtractionReport, extract_features
from clothsim.features.store import FeatureStore
from clothsim.images import load_image
from clothsim.index.base import SearchHit
from clothsim.index.exact import open_index

logger = logging.getLogger(__name__)

ImageLike = str | Path | bytes | Image.Image


def _weights_source(weights: str | Path | None) -> str | None:
    """What to record so a catalogue can rebuild its encoder: an absolute path, 'random' or None."""
    if weights is None or str(weights) == "random":
        return None if weights is None else "random"
    return str(Path(weights).resolve())


class Catalog:
    """A searchable catalogue: an encoder, the feature store it filled, and an index over it.

    Build one with :meth:`build`, reopen it later with :meth:`open`::

        catalog, report = Catalog.build("photos/train", "catalog/", encoder="vgg16", weights="vgg16.pth")
        hits = Catalog.open("catalog/").search("query.jpg", k=5)
    """

    def __init__(self, store: FeatureStore, encoder: Encoder, backend: str = "exact") -> None:
        store.check_fingerprint(encoder.fingerprint())
        self.store = store
        self.encoder = encoder
        self.index = open_index(store, backend)

    @classmethod
    def build(
        cls,
        records: Sequence[CatalogRecord],
        out_dir: str | Path,
        encoder: str | Encoder = DEFAULT_ENCODER,
        weights: str | Path | None = None,
        device: str = "cpu",
        **extract_options,
    ) -> tuple["Catalog", ExtractionReport]:
        """Encode ``records`` into a store at ``out_dir`` and open it for search.

        ``extract_options`` go to :func:`clothsim.features.extract_features` (batch_size, num_workers,
        dtype, overwrite, progress, ...). Returns the catalogue and the extraction report.
        """
        enc = encoder if isinstance(encoder, Encoder) else create_encoder(encoder, weights=weights, device=device)
        extra = {"weights_source": _weights_source(weights), "index_backend": "exact"}
        report = extract_features(records, enc, out_dir, extra_manifest=extra, **extract_options)
        return cls(FeatureStore.open(out_dir), enc), report

    @classmethod
    def open(
        cls,
        path: str | Path,
        weights: str | Path | None = None,
        device: str = "cpu",
        encoder: Encoder | None = None,
    ) -> "Catalog":
        """Open a catalogue built earlier; its encoder is rebuilt from the store's stamp.

        The weights file recorded at build time is used unless ``weights`` names another; either way
        the weights' hash must match the store's, or :class:`clothsim.errors.StaleStoreError` is raised.
        """
        store = FeatureStore.open(path)
        if encoder is None:
            if weights is None:
                weights = store.manifest.get("weights_source")
            encoder = create_encoder(store.encoder_name, weights=weights, device=device)
        backend = store.manifest.get("index_backend", "exact")
        return cls(store, encoder, backend)

    def __len__(self) -> int:
        return len(self.index)

    def categories(self) -> dict[str, int]:
        """Item count per category."""
        return self.index.categories()

    def embed(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Encode query images (paths, bytes or PIL images) with the catalogue's encoder."""
        pil = [img.convert("RGB") if isinstance(img, Image.Image) else load_image(img) for img in images]
        return self.encoder.encode_images(pil)

    def search(
        self, image: ImageLike, k: int = 5, category: str | Sequence[str] | None = None
    ) -> list[SearchHit]:
        """The ``k`` catalogue items most similar to one image, best first."""
        return self.index.search(self.embed([image]), k, category=category)[0]

    def search_by_id(
        self, item_id: int, k: int = 5, category: str | Sequence[str] | None = None
    ) -> list[SearchHit]:
        """The ``k`` items most similar to a catalogue item, the item itself left out."""
        vector = self.store.vector(item_id)[None, :]
        return self.index.search(vector, k, category=category, exclude_ids=[item_id])[0]

    def add(self, records: Sequence[CatalogRecord]) -> np.ndarray:
        """Encode and add images without rebuilding; undecodable ones are skipped and logged."""
        images, kept = [], []
        for record in records:
            try:
                images.append(load_image(record.path, bbox=record.bbox))
                kept.append(record)
            except (OSError, ValueError) as exc:
                logger.warning("not added: %s", exc)
        if not kept:
            return np.zeros(0, dtype=np.int64)
        return self.index.add(self.encoder.encode_images(images), kept)

    def delete(self, ids: Sequence[int]) -> int:
        """Remove items by id; returns how many were present."""
        return self.index.delete(ids)
