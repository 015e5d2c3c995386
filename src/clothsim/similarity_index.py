"""The Python API in one object: build a searchable index folder from a catalogue, open it, search it.

Words, used the same way in the CLI, this API and the docs: a *catalogue* is the photos and their
labels that go in (``read_catalog``); an *index* is the folder that ``clothsim index`` /
:meth:`SimilarityIndex.build` writes and ``clothsim search --index`` / :meth:`SimilarityIndex.open`
reads. Inside it, the vectors and their metadata are a :class:`~clothsim.features.FeatureStore`, the
encoder that made them is recorded as an :class:`~clothsim.encoders.spec.EncoderSpec` (with its model
file under ``models/``), and an index backend (a plug-in) searches them.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from PIL import Image

from clothsim.defaults import DEFAULT_TEXT_WEIGHT
from clothsim.data.records import CatalogRecord
from clothsim.defaults import DEFAULT_ENCODER, DEFAULT_INDEX_BACKEND, DEFAULT_RUNTIME
from clothsim.encoders.base import Encoder, collate, l2_normalize
from clothsim.encoders.factory import build_encoder, resolve_encoder, weights_source
from clothsim.engines import configure_engine
from clothsim.errors import UsageError
from clothsim.features.extract import ExtractionReport, extract_features
from clothsim.features.model_files import recorded_spec
from clothsim.features.store import FeatureStore
from clothsim.index.base import IndexBackend, SearchHit, check_plugin_options
from clothsim.index.registry import backend_registry, open_index, sync_index

if TYPE_CHECKING:
    from clothsim.runtimes.onnx_text import OnnxTextEncoder
    from clothsim.zero_shot import LabelList, LabelReport

logger = logging.getLogger(__name__)

ImageLike = str | Path | bytes | Image.Image

#: Photos decoded and encoded together by :meth:`SimilarityIndex.embed` and :meth:`SimilarityIndex.add`.
BATCH_SIZE = 32
#: :meth:`SimilarityIndex.add` commits after every this many photos, so memory stays bounded however
#: many are added and an interruption keeps what was committed.
ADD_COMMIT_EVERY = 10_000



def mix_query(photo: np.ndarray, text: np.ndarray, text_weight: float = DEFAULT_TEXT_WEIGHT) -> np.ndarray:
    """The unit vector of ``(1 - text_weight) * photo + text_weight * text``: one query from a photo's
    and a text's ``(1, dim)`` vectors ("like this photo, but red")."""
    if not 0.0 <= float(text_weight) <= 1.0:
        raise UsageError(f"text_weight must lie between 0 and 1, got {text_weight}")
    return l2_normalize((1.0 - float(text_weight)) * photo + float(text_weight) * text)

class SimilarityIndex:
    """A searchable index folder: an encoder, the feature store it filled, and a backend over it.

    Build one with :meth:`build`, reopen it later with :meth:`open`::

        index, report = SimilarityIndex.build(records, "index/")
        hits = SimilarityIndex.open("index/").search("query.jpg", k=5)
    """

    def __init__(self, store: FeatureStore, encoder: Encoder, backend: IndexBackend) -> None:
        store.check_fingerprint(encoder.fingerprint())
        self.store = store
        self.encoder = encoder
        self.backend = backend
        #: What the last :meth:`label` did (``None`` before any).
        self.label_report: "LabelReport | None" = None

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
        labels: "LabelList | None" = None,
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
                (``minmax``, ``percentile``, ``entropy``); offered for the encoders whose int8 P@5 stays
                within 0.01 of float32 (docs/design-notes.md).
            backend: Index backend plug-in (see ``clothsim.index.list_backends()``); recorded in the
                folder, so :meth:`open` uses it again.
            backend_options: Options of the backend, recorded with it.
            engine: What decodes and encodes: ``"local"`` (this machine) or ``"ray"`` (a Ray cluster;
                ``engine_options`` ``ray_address`` such as ``"auto"`` or ``"ray://HOST:10001"`` and
                ``actors``). The index is the same whichever engine built it.
            labels: Give every item its best label from this list through the encoder's text tower
                (:mod:`clothsim.zero_shot`): stored as the category of items without one, or as a named
                attribute; what it did is :attr:`label_report`. Needs an encoder with a text tower.
            extract_options: For :func:`clothsim.features.extract_features` (batch_size, num_workers,
                dtype, use_bbox, overwrite, progress, ...).

        Returns:
            The open index and the extraction report (what was encoded, what was skipped and why).

        The encoder's spec is recorded in the folder, with its model file copied into ``models/``
        unless it ships with clothsim, so the index searches with exactly that model later.
        """
        from clothsim.runtimes.int8 import Calibration

        # Everything that can be refused is refused before any work: backend, its options, the engine.
        plugin = backend_registry.get(backend)
        check_plugin_options(plugin, backend_options or {})
        chosen_engine = configure_engine(engine, **(engine_options or {}))
        calibration = None
        if precision == "int8":
            calibration = Calibration(records, images=calibration_images, method=calibration_method,
                                      use_bbox=extract_options.get("use_bbox", True))
        enc = resolve_encoder(encoder, weights, device, runtime, threads, precision=precision,
                              calibration=calibration)
        if labels is not None:
            from clothsim.runtimes.onnx_text import text_refusal
            from clothsim.zero_shot import carry_labels

            if not enc.spec.has_text_tower:  # refused before any photo is encoded
                raise UsageError("--label-with needs a text tower: " + text_refusal(enc.spec, "the index"))
            records = carry_labels(records, out_dir, labels.field)
        extra = {"weights_source": weights_source(weights)}
        report = extract_features(records, enc, out_dir, extra_manifest=extra, engine=chosen_engine,
                                  **extract_options)
        store = FeatureStore.open(out_dir)
        # Caught up and saved when the store changed or its last save was lost; rebuilt when damaged.
        index = sync_index(store, backend, backend_options, rebuild=report.rebuilt)
        built = cls(store, enc, index)
        if labels is not None:
            built.label(labels)
        return built, report

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
        """Open an index folder built earlier; its encoder is built from the spec the folder records.

        The recorded model file is run (on ONNX Runtime, no torch needed) unless ``runtime`` asks for
        another runtime or ``weights`` names a weights file to build the network from, which must
        then be the weights the index was built with (else :class:`clothsim.errors.StaleStoreError`).
        Any runtime may search an index built by another: they give the same vectors.
        ``backend_options`` override the recorded search-time options of the index's backend
        (e.g. ``{"efSearch": 256}``); the backend itself is the one recorded at build time.

        Raises:
            FileNotFoundError: no index folder at ``path``.
            StoreIntegrityError: the folder is damaged (the message names the file and the repair).
        """
        folder = Path(path)
        if not folder.exists():
            raise FileNotFoundError(f"index folder {folder} does not exist")
        store = FeatureStore.open(folder)
        if encoder is None:
            spec = recorded_spec(store)
            if weights is not None:
                if spec.precision != "fp32":
                    raise UsageError(f"{folder} was built with an {spec.precision} model file, which is the model; "
                                     "--weights does not apply to it")
                spec = replace(spec, weights_source=weights_source(weights), model_file=None, model_sha256=None)
            encoder = build_encoder(spec, runtime=runtime, threads=threads, device=device, base_dir=folder)
        return cls(store, encoder, open_index(store, **(backend_options or {})))

    def __len__(self) -> int:
        return len(self.backend)

    def categories(self) -> dict[str, int]:
        """Live item count per category."""
        return self.backend.categories()

    def embed(self, images: Sequence[ImageLike], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Encode query images (paths, bytes or PIL images) with the index's encoder.

        Photos are decoded as at indexing time (reduced where that is exact) and encoded
        ``batch_size`` at a time, so memory stays bounded however many there are.

        Raises:
            ImageDecodeError, FileNotFoundError: a query photo cannot be used (the message names it).
        """
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        out = [self.encoder.embed(collate(batch)) for batch in self._query_batches(images, batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.encoder.dim), dtype=np.float32)

    def _query_batches(self, images: Sequence[ImageLike], batch_size: int) -> Iterator[list[Any]]:
        from clothsim.engines.local import iter_decoded
        from clothsim.images import load_image

        transform, side = self.encoder.transform, self.encoder.decode_min_side

        def prepare(image: ImageLike, _bbox: Any) -> tuple[Any, None]:
            # A query that cannot be used is an error (raised here, in the caller's thread), not a skip.
            if isinstance(image, Image.Image):
                return transform(image.convert("RGB")), None
            return transform(load_image(image if isinstance(image, bytes) else str(image), min_side=side)), None

        batch: list[Any] = []
        for value, _ in iter_decoded([(image, None) for image in images], prepare,
                                     workers=min(2, len(images) - 1), ahead=batch_size):
            batch.append(value)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def search(
        self, image: ImageLike, k: int = 5, category: str | Sequence[str] | None = None, *,
        collapse: bool = False,
    ) -> list[SearchHit]:
        """The ``k`` indexed items most similar to one image, best first.

        With ``collapse``, near-duplicates count once: each hit stands for its group of copies (the groups
        of the last ``clothsim duplicates`` run, and any item at least the index's duplicate threshold
        from a better hit), and says how many items it stands for in ``group_size``.
        """
        vector = self.embed([image])
        if collapse:
            from clothsim.duplicates.collapse import collapsed_search

            return collapsed_search(self, vector[0], k, category)
        return self.backend.search(vector, k, category=category)[0]

    # ----- text -------------------------------------------------------------------------------------
    def label(self, labels: "LabelList") -> "LabelReport":
        """Give every item its best label from ``labels`` through the text tower, stored in the index (see
        :mod:`clothsim.zero_shot`); the report is also kept as :attr:`label_report`.

        Raises:
            UsageError: the index's encoder has no text tower.
        """
        from clothsim.zero_shot import label_index

        self.label_report = label_index(self, labels)
        return self.label_report

    @property
    def text_encoder(self) -> "OnnxTextEncoder":
        """The text tower of the index's encoder, on ONNX Runtime (built on first use, no torch).

        Raises:
            UsageError: the encoder has no text tower (the message says which encoders have one).
        """
        found = self.__dict__.get("_text_encoder")
        if found is None:
            from clothsim.runtimes.onnx_text import OnnxTextEncoder

            spec = self.encoder.spec
            if spec.text is None or not spec.files:
                spec = recorded_spec(self.store).with_absolute_files(self.store.root)
            found = OnnxTextEncoder(spec, threads=getattr(self.encoder, "threads", None),
                                    base_dir=self.store.root)
            self.__dict__["_text_encoder"] = found
        return found

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of ``texts`` in the space of the index's image vectors (see :attr:`text_encoder`)."""
        return self.text_encoder.encode(list(texts))

    def query_vector(self, text: str | None = None, image: ImageLike | None = None,
                     text_weight: float = DEFAULT_TEXT_WEIGHT) -> np.ndarray:
        """The ``(1, dim)`` query of a text, a photo, or both: with both, the unit vector of
        ``(1 - text_weight) * photo + text_weight * text`` ("like this photo, but red").

        Raises:
            UsageError: neither given, a weight outside [0, 1], or text on an index without a text tower.
        """
        if text is None and image is None:
            raise UsageError("give a text, a photo, or both")
        if not 0.0 <= float(text_weight) <= 1.0:
            raise UsageError(f"text_weight must lie between 0 and 1, got {text_weight}")
        if text is None:
            return self.embed([image])  # type: ignore[list-item]
        text_vector = self.embed_text([text])
        if image is None:
            return text_vector
        return mix_query(self.embed([image]), text_vector, text_weight)

    def search_text(self, text: str, k: int = 5, category: str | Sequence[str] | None = None, *,
                    image: ImageLike | None = None, text_weight: float = DEFAULT_TEXT_WEIGHT,
                    collapse: bool = False) -> list[SearchHit]:
        """The ``k`` indexed items closest to a text ("red floral dress"), or to a photo and a text
        together (``image``, mixed by ``text_weight``, see :meth:`query_vector`), best first
        (``collapse`` as for :meth:`search`).

        Raises:
            UsageError: the index's encoder has no text tower, an empty text, or a bad weight.
        """
        vector = self.query_vector(text, image, text_weight)
        if collapse:
            from clothsim.duplicates.collapse import collapsed_search

            return collapsed_search(self, vector[0], k, category)
        return self.backend.search(vector, k, category=category)[0]

    def search_by_id(
        self, item_id: int, k: int = 5, category: str | Sequence[str] | None = None, *,
        collapse: bool = False,
    ) -> list[SearchHit]:
        """The ``k`` items most similar to an indexed item, the item itself left out (``collapse`` as
        for :meth:`search`)."""
        vector = self.store.vector(item_id)
        if collapse:
            from clothsim.duplicates.collapse import collapsed_search

            return collapsed_search(self, vector, k, category, exclude_id=item_id)
        return self.backend.search(vector[None, :], k, category=category, exclude_ids=[item_id])[0]

    def add(self, records: Sequence[CatalogRecord], progress: bool = False) -> np.ndarray:
        """Encode and add photos without rebuilding; returns their new ids (in the order of the records
        that could be encoded).

        Photos are decoded and encoded :data:`BATCH_SIZE` at a time and committed every
        :data:`ADD_COMMIT_EVERY`, so memory stays bounded however many are added. Images are cropped to
        their boxes exactly when the index was built that way. Files that cannot be decoded are
        skipped, logged and recorded in the index's failure list, as at build time.
        """
        from clothsim.engines.local import iter_encoded_shards

        crop = bool(self.store.manifest.get("use_bbox", True))
        if not records:
            return np.zeros(0, dtype=np.int64)
        ids: list[np.ndarray] = []
        n_chunks = (len(records) + ADD_COMMIT_EVERY - 1) // ADD_COMMIT_EVERY
        for done in iter_encoded_shards(records, range(n_chunks), ADD_COMMIT_EVERY, self.encoder.transform,
                                        self.encoder.embed, batch_size=BATCH_SIZE, num_workers=2, use_bbox=crop,
                                        progress=progress, desc="adding", min_side=self.encoder.decode_min_side):
            for failure in done.failures:
                logger.warning("not added: %s", failure["reason"])
            if done.indices:
                kept = [records[i] for i in done.indices]
                ids.append(self.backend.add(np.asarray(done.outputs, dtype=np.float32), kept,
                                            failures=done.failures))
            elif done.failures:
                self.store.commit(failures=self.store.failures + done.failures)
            self.backend.save()
        return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)

    def delete(self, ids: Sequence[int]) -> int:
        """Remove items by id; returns how many were present."""
        removed = self.backend.delete(ids)
        self.backend.save()
        return removed
