"""The Python API in one object: build a searchable index folder from a catalogue, open it, search it.

Words, used the same way in the CLI, this API and the README: a *catalogue* is the photos and their
labels that go in (``read_catalog``); an *index* is the folder that ``clothsim index`` /
:meth:`SimilarityIndex.build` writes and ``clothsim search --index`` / :meth:`SimilarityIndex.open`
reads. Inside it, the vectors and their metadata are a :class:`~clothsim.features.FeatureStore`, and
an index backend (a plug-in) searches them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from clothsim.data.records import CatalogRecord
from clothsim.defaults import DEFAULT_ENCODER, DEFAULT_INDEX_BACKEND, DEFAULT_RUNTIME
from clothsim.encoders.base import Encoder
from clothsim.encoders.registry import create_encoder
from clothsim.encoders.weights import weights_source
from clothsim.engines import configure_engine
from clothsim.features.extract import ExtractionReport, extract_features
from clothsim.errors import UsageError
from clothsim.features.store import FeatureStore
from clothsim.images import UNUSABLE_IMAGE_ERRORS, load_image
from clothsim.index.base import IndexBackend, SearchHit
from clothsim.index.registry import backend_registry, open_index, sync_index

logger = logging.getLogger(__name__)

ImageLike = str | Path | bytes | Image.Image


class SimilarityIndex:
    """A searchable index folder: an encoder, the feature store it filled, and a backend over it.

    Build one with :meth:`build`, reopen it later with :meth:`open`::

        index, report = SimilarityIndex.build(records, "index/", encoder="vgg16", weights="vgg16.pth")
        hits = SimilarityIndex.open("index/").search("query.jpg", k=5)
    """

    def __init__(self, store: FeatureStore, encoder: Encoder, backend: IndexBackend) -> None:
        store.check_fingerprint(encoder.fingerprint())
        self.store = store
        self.encoder = encoder
        self.backend = backend

    @classmethod
    def build(
        cls,
        records: Sequence[CatalogRecord],
        out_dir: str | Path,
        encoder: str | Encoder = DEFAULT_ENCODER,
        weights: str | Path | None = None,
        device: str = "cpu",
        *,
        runtime: str = DEFAULT_RUNTIME,
        threads: int | None = None,
        precision: str = "fp32",
        calibration_images: int = 64,
        calibration_method: str = "minmax",
        backend: str = DEFAULT_INDEX_BACKEND,
        backend_options: dict[str, Any] | None = None,
        engine: str = "local",
        engine_options: dict[str, Any] | None = None,
        **extract_options: Any,
    ) -> tuple["SimilarityIndex", ExtractionReport]:
        """Encode ``records`` into an index folder at ``out_dir`` and open it for search.

        Args:
            records: The catalogue, e.g. from :func:`clothsim.read_catalog`.
            out_dir: The index folder (resumed when a run was interrupted, reused when up to date).
            encoder: An encoder name (see ``clothsim encoders``) or a built :class:`Encoder`.
            weights, device, runtime, threads: As for :func:`clothsim.create_encoder`.
            precision: ``"fp32"``, or ``"int8"``: the network quantized by ONNX Runtime, calibrated on
                ``calibration_images`` photos of ``records`` (seeded) with ``calibration_method``
                (``minmax``, ``percentile``, ``entropy``); offered for the encoders whose int8 P@5 was
                measured within 0.01 of float32. The int8 model is kept in the index folder.
            backend: Index backend plug-in (see ``clothsim.index.list_backends()``); recorded in the
                folder, so :meth:`open` uses it again.
            backend_options: Options of the backend, recorded with it.
            engine: What decodes and encodes: ``"local"`` (this machine) or ``"ray"`` (a Ray cluster;
                ``engine_options`` ``ray_address`` such as ``"auto"`` or ``"ray://HOST:10001"`` and
                ``actors``). The index is the same whichever engine built it.
            extract_options: For :func:`clothsim.features.extract_features` (batch_size, num_workers,
                dtype, use_bbox, overwrite, progress, ...).

        Returns:
            The open index and the extraction report (what was encoded, what was skipped and why).
        """
        plugin = backend_registry.get(backend)  # an unknown backend fails before hours of encoding
        chosen_engine = configure_engine(engine, **(engine_options or {}))
        check_options = getattr(plugin, "check_options", None)
        if check_options is not None:  # and so does a misspelt backend option
            check_options(dict(backend_options or {}))
        if precision == "int8":
            enc = _int8_encoder(encoder, records, weights, device, runtime, threads, calibration_images,
                                calibration_method, extract_options.get("use_bbox", True))
        elif precision != "fp32":
            raise UsageError(f"precision must be fp32 or int8, got {precision!r}")
        else:
            enc = encoder if isinstance(encoder, Encoder) else create_encoder(
                encoder, weights=weights, device=device, runtime=runtime, threads=threads)
        extra = {"weights_source": weights_source(weights)}
        report = extract_features(records, enc, out_dir, extra_manifest=extra, engine=chosen_engine,
                                  **extract_options)
        if precision == "int8":
            from clothsim.runtimes.int8 import keep_in_index

            keep_in_index(enc, out_dir)  # type: ignore[arg-type]
        store = FeatureStore.open(out_dir)
        # Caught up and saved when the store changed or its last save was lost; rebuilt when damaged.
        index = sync_index(store, backend, backend_options, rebuild=report.rebuilt)
        return cls(store, enc, index), report

    @classmethod
    def open(
        cls,
        path: str | Path,
        weights: str | Path | None = None,
        device: str = "cpu",
        encoder: Encoder | None = None,
        *,
        runtime: str = DEFAULT_RUNTIME,
        threads: int | None = None,
        backend_options: dict[str, Any] | None = None,
    ) -> "SimilarityIndex":
        """Open an index folder built earlier; its encoder is rebuilt from the store's stamp.

        The weights file recorded at build time is used unless ``weights`` names another; either way
        the weights' hash must match the store's, or :class:`clothsim.errors.StaleStoreError` is raised.
        Any runtime may search an index built by another: they give the same vectors.
        ``backend_options`` override the recorded search-time options of the index's backend
        (e.g. ``{"efSearch": 256}``); the backend itself is the one recorded at build time.
        """
        store = FeatureStore.open(path)
        if encoder is None:
            if weights is None:
                weights = store.manifest.get("weights_source")
            if store.fingerprint.get("precision") == "int8":
                from clothsim.runtimes.int8 import int8_model_path, load_int8_encoder

                base = create_encoder(store.encoder_name, weights=weights, device=device, runtime="torch")
                encoder = load_int8_encoder(base, int8_model_path(path, store.encoder_name),
                                            store.fingerprint.get("quantized_sha256"), threads=threads)
                encoder.runtime = "onnx"
            else:
                encoder = create_encoder(store.encoder_name, weights=weights, device=device, runtime=runtime,
                                         threads=threads)
        return cls(store, encoder, open_index(store, **(backend_options or {})))

    def __len__(self) -> int:
        return len(self.backend)

    @property
    def index(self) -> IndexBackend:
        """The backend; the old name of :attr:`backend`."""
        return self.backend

    def categories(self) -> dict[str, int]:
        """Live item count per category."""
        return self.backend.categories()

    def embed(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Encode query images (paths, bytes or PIL images) with the index's encoder."""
        side = self.encoder.decode_min_side  # decoded as at indexing time: reduced where that is exact
        pil = [img.convert("RGB") if isinstance(img, Image.Image) else load_image(img, min_side=side)
               for img in images]
        return self.encoder.encode_images(pil)

    def search(
        self, image: ImageLike, k: int = 5, category: str | Sequence[str] | None = None
    ) -> list[SearchHit]:
        """The ``k`` indexed items most similar to one image, best first."""
        return self.backend.search(self.embed([image]), k, category=category)[0]

    def search_by_id(
        self, item_id: int, k: int = 5, category: str | Sequence[str] | None = None
    ) -> list[SearchHit]:
        """The ``k`` items most similar to an indexed item, the item itself left out."""
        vector = self.store.vector(item_id)[None, :]
        return self.backend.search(vector, k, category=category, exclude_ids=[item_id])[0]

    def add(self, records: Sequence[CatalogRecord]) -> np.ndarray:
        """Encode and add images without rebuilding; returns their new ids.

        Images are cropped to their boxes exactly when the index was built that way. Files that cannot
        be decoded are skipped, logged and recorded in the index's failure list, as at build time.
        """
        crop = bool(self.store.manifest.get("use_bbox", True))
        images, kept, failures = [], [], []
        for record in records:
            try:
                images.append(load_image(record.path, bbox=record.bbox if crop else None,
                                         min_side=self.encoder.decode_min_side))
                kept.append(record)
            except UNUSABLE_IMAGE_ERRORS as exc:
                logger.warning("not added: %s", exc)
                failures.append({"path": record.path, "reason": str(exc)})
        vectors = self.encoder.encode_images(images) if kept else np.zeros((0, self.encoder.dim), np.float32)
        if not kept and not failures:
            return np.zeros(0, dtype=np.int64)
        ids = self.backend.add(vectors, kept, failures=failures) if kept else self._record_failures(failures)
        self.backend.save()
        return ids

    def _record_failures(self, failures: list[dict[str, str]]) -> np.ndarray:
        self.store.commit(failures=self.store.failures + failures)
        return np.zeros(0, dtype=np.int64)

    def delete(self, ids: Sequence[int]) -> int:
        """Remove items by id; returns how many were present."""
        removed = self.backend.delete(ids)
        self.backend.save()
        return removed


def _int8_encoder(encoder: str | Encoder, records: Sequence[CatalogRecord], weights: str | Path | None,
                  device: str, runtime: str, threads: int | None, count: int, method: str,
                  use_bbox: bool) -> Encoder:
    from clothsim.encoders.registry import encoder_registry
    from clothsim.runtimes.int8 import build_int8_encoder, check_int8_offered

    if runtime not in ("auto", "onnx"):
        raise UsageError(f"--precision int8 runs on the onnx runtime, not {runtime!r}")
    base = encoder if isinstance(encoder, Encoder) else create_encoder(encoder, weights=weights, device=device,
                                                                       runtime="torch")
    base = getattr(base, "source", base)  # quantize the torch network, whatever runtime was asked for
    plugin = encoder_registry.get(base.name) if base.name in encoder_registry else None
    check_int8_offered(base.name, bool(getattr(plugin, "int8_validated", False)))
    int8 = build_int8_encoder(base, records, count=count, method=method, use_bbox=use_bbox, threads=threads)
    int8.runtime = "onnx"
    return int8
