"""Ensembles from cached part stores: fit one on a catalogue, and fill its store without re-encoding.

Both work from the parts' feature stores in a cache laid out by :mod:`clothsim.evaluation.split_stores`, so
each image goes through each CNN once however many ensembles and reports use it.
"""

from __future__ import annotations

import logging
import warnings
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clothsim.data.records import CatalogRecord, require_categories
from clothsim.encoders.factory import create_encoder
from clothsim.ensemble.encoder import EnsembleEncoder
from clothsim.ensemble.fit import FIT_SPLITS, aligned_vectors, fit_ensemble
from clothsim.ensemble.model import EnsembleModel, PartSpec
from clothsim.encoders.factory import weights_source
from clothsim.evaluation.split_stores import extract_split, split_store_dir
from clothsim.features.extract import catalog_hash
from clothsim.features.store import FeatureStore, fingerprint_mismatch
from clothsim.errors import DataError, UsageError

logger = logging.getLogger(__name__)


def fit_from_catalog(
    records: Sequence[CatalogRecord],
    parts: Sequence[str],
    cache: str | Path,
    *,
    weight_files: dict[str, str | None] | None = None,
    mix: Sequence[float] | None = None,
    method: str = "average",
    grid_step: float = 0.1,
    device: str = "cpu",
    part_weights: dict[str, str | None] | None = None,
    weights: Sequence[float] | None = None,
    **extract_options: Any,
) -> EnsembleModel:
    """Encode the train (and validation) split with each part, cached, and fit an ensemble on them.

    Records of other splits are ignored before anything is encoded.

    Args:
        records: The catalogue (with splits).
        parts: Part encoder names, e.g. ``["vgg16", "efficientnet_lite0"]``.
        cache: Folder of cached stores.
        weight_files: ``{part name: weights}`` as for :func:`~clothsim.encoders.create_encoder` (the
            CLI's ``--weights NAME=PATH``).
        mix: Fixed mixing weights of the parts instead of the validation search (``--mix``).
        method, grid_step: As for :func:`~clothsim.ensemble.fit.fit_ensemble`.
        part_weights, weights: Deprecated spellings of ``weight_files`` and ``mix``.
        device: Torch device.
        extract_options: For :func:`~clothsim.features.extract_features` (batch_size, num_workers, ...).

    Raises:
        ValueError: No train records, repeated or too few parts.
        WeightsUnavailableError: A part's weights cannot be had.
    """
    require_categories(records, "clothsim fit-ensemble")
    if len(parts) < 2 or len(set(parts)) != len(parts):
        raise UsageError(f"an ensemble needs two or more different parts, got {list(parts)}")
    if part_weights is not None or weights is not None:
        warnings.warn("fit_from_catalog(part_weights=, weights=) are now weight_files= and mix=",
                      DeprecationWarning, stacklevel=2)
        weight_files = weight_files if weight_files is not None else part_weights
        mix = mix if mix is not None else weights
    part_weights = dict(weight_files or {})
    splits = [s for s in FIT_SPLITS if any(r.split == s for r in records)]
    if "train" not in splits:
        raise DataError("the catalogue has no train split to fit the ensemble on")
    specs, dirs = [], []
    for name in parts:
        encoder = create_encoder(name, weights=part_weights.get(name), device=device)
        specs.append(PartSpec(name, weights_source(part_weights.get(name)), encoder.fingerprint()))
        for split in splits:
            extract_split(records, split, encoder, cache, weights=part_weights.get(name), **extract_options)
        dirs.append([split_store_dir(cache, encoder.name, split) for split in splits])
    fit_records: list[CatalogRecord] = []
    vectors: list[list] = [[] for _ in parts]
    for s in range(len(splits)):
        rows, part_vectors = aligned_vectors([d[s] for d in dirs])
        fit_records.extend(rows)
        for i, v in enumerate(part_vectors):
            vectors[i].append(v)
    stacked = [np.concatenate(v) for v in vectors]
    return fit_ensemble(specs, fit_records, stacked, weights=mix, method=method, grid_step=grid_step)


def _extraction_speed(stores: Sequence[FeatureStore]) -> float | None:
    """Images/s of running every part in turn: the parts' times per image add up."""
    speeds = [(s.manifest.get("extraction") or {}).get("images_per_second") for s in stores]
    if any(not v for v in speeds):
        return None
    return 1.0 / sum(1.0 / float(v) for v in speeds)


def build_store_from_parts(
    encoder: EnsembleEncoder,
    records: Sequence[CatalogRecord],
    part_stores: Sequence[str | Path],
    store_dir: str | Path,
    dtype: str = "float32",
) -> FeatureStore:
    """Write the ensemble's store for ``records`` by combining the parts' stores of the same records.

    The result is what :func:`clothsim.features.extract_features` would write for ``records`` and
    ``encoder`` (same fingerprint and catalogue stamp, so that function reuses it), without running
    the CNNs again. A store already there for the same encoder and records is returned as it is.

    Raises:
        ValueError: A part store holds other records or was built by another encoder setup.
    """
    store_dir = Path(store_dir)
    fingerprint = encoder.fingerprint()
    source = catalog_hash(records)
    if FeatureStore.exists(store_dir):
        existing = FeatureStore.open(store_dir)
        if (not fingerprint_mismatch(fingerprint, existing.fingerprint)
                and existing.manifest.get("source_hash") == source and existing.dtype == dtype):
            return existing
        shutil.rmtree(store_dir)
    opened = [FeatureStore.open(p) for p in part_stores]
    for part, store in zip(encoder.parts, opened):
        store.check_fingerprint(part.fingerprint())
        if store.manifest.get("source_hash") != source:
            raise DataError(f"{store.root} holds other records than the ones asked for; extract them first")
    rows, part_vectors = aligned_vectors(part_stores)
    combined = encoder.model.combine(part_vectors)
    store = FeatureStore.create(store_dir, fingerprint, dtype=dtype,
                                extra={"weights_source": None,
                                       "built_from_parts": [str(p.root) for p in opened]})
    failures = {f["path"]: f for s in opened for f in s.failures}
    store.append(combined, rows)
    store.commit(source_hash=source, failures=list(failures.values()), n_source_records=len(records),
                 extraction={"images_per_second": _extraction_speed(opened), "derived_from_parts": True})
    logger.info("built %s store of %d rows from its parts' stores", encoder.label, len(rows))
    return store
