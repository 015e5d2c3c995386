"""From a catalogue to a saved Siamese model folder: cache feature maps, split, train, save, plot."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clothsim.data.records import CatalogRecord, require_categories
from clothsim.data.splits import balanced_split
from clothsim.encoders.factory import create_encoder
from clothsim.errors import DataError, EmptyCatalogError
from clothsim.training.checkpoint import HISTORY, save_model
from clothsim.training.model_folder import save_model_file
from clothsim.training.feature_maps import FeatureMapCache, build_feature_map_cache
from clothsim.training.plots import save_training_curves
from clothsim.training.trainer import TrainConfig, TrainResult, train_siamese

logger = logging.getLogger(__name__)

LOSS_PLOT = "loss.png"
ACCURACY_PLOT = "accuracy.png"


@dataclass(frozen=True)
class SplitRows:
    """Rows of a feature-map cache used for training and for validation, and where validation came from."""

    train: np.ndarray
    validation: np.ndarray
    validation_source: str


def default_feature_cache_root() -> Path:
    """``<clothsim cache>/feature_maps`` (``$CLOTHSIM_CACHE`` overrides the cache folder)."""
    from clothsim.user_dirs import default_cache_dir

    return default_cache_dir() / "feature_maps"


def split_rows(records: Sequence[CatalogRecord], val_fraction: float = 0.1, seed: int = 0) -> SplitRows:
    """Training and validation rows of ``records``.

    The data's own ``validation`` split is used when it has one; otherwise ``val_fraction`` of every
    training category is held out, seeded. Records without any split all count as training data;
    other splits (test, query, gallery) are never used.

    Raises:
        EmptyCatalogError: there are no training records.
    """
    splits = {r.split for r in records}
    train_names = {"train"} if "train" in splits else ({None} if splits == {None} else set())
    train = [i for i, r in enumerate(records) if r.split in train_names]
    if not train:
        raise EmptyCatalogError(f"no training images: the catalogue's splits are {sorted(map(str, splits))}")
    validation = [i for i, r in enumerate(records) if r.split == "validation"]
    if validation:
        return SplitRows(np.asarray(train), np.asarray(validation), "validation split")
    carved = balanced_split([records[i] for i in train], test_fraction=val_fraction, seed=seed).records
    held = [i for i, r in zip(train, carved) if r.split == "test"]
    kept = [i for i, r in zip(train, carved) if r.split != "test"]
    if not held:
        raise EmptyCatalogError("too few training images to hold out a validation set")
    return SplitRows(np.asarray(kept), np.asarray(held), f"{val_fraction:.0%} of train (seed {seed})")


def fit_siamese_on_catalog(
    records: Sequence[CatalogRecord],
    out_dir: str | Path,
    *,
    config: TrainConfig | None = None,
    encoder: str = "vgg16",
    weights: str | Path | None = None,
    device: str = "cpu",
    runtime: str = "auto",
    cache_root: str | Path | None = None,
    batch_size: int = 16,
    num_workers: int = 1,
    progress: bool = True,
) -> tuple[TrainResult, FeatureMapCache]:
    """Train a Siamese model on ``records`` and save it (checkpoint, config, history, plots) to ``out_dir``.

    The base encoder's feature maps of every record are cached under ``cache_root`` first (reused or
    resumed when already there), so later runs with other hyper-parameters start at once.

    Args:
        records: The catalogue; its ``train`` split trains, its ``validation`` split (or a seeded carve
            of train) validates.
        out_dir: The model folder to write.
        config: Hyper-parameters.
        encoder: Base CNN encoder name (it must offer ``feature_maps``).
        weights: Base CNN weights (see :func:`clothsim.create_encoder`).
        device: Torch device for feature extraction.
        runtime: What computes the cached feature maps (as for :func:`clothsim.create_encoder`).
        cache_root: Where feature-map caches live (default :func:`default_feature_cache_root`).
        batch_size: Images per forward pass while caching.
        num_workers: Image-decoding processes while caching.
        progress: Progress bars.

    Returns:
        The training result and the feature-map cache it used.
    """
    require_categories(records, "clothsim train-siamese")
    config = config or TrainConfig()
    base = create_encoder(encoder, weights=weights, device=device, runtime=runtime)
    cache = build_feature_map_cache(records, base, cache_root or default_feature_cache_root(),
                                    batch_size=batch_size, num_workers=num_workers, progress=progress)
    rows = split_rows(cache.records, config.val_fraction, config.seed)
    pooled = cache.pooled_max
    labels = [r.category for r in cache.records]
    attributes = [tuple(r.attributes) for r in cache.records]
    use_attributes = config.pair_rule == "category+attributes"
    if use_attributes and not any(attributes):
        raise DataError("pair_rule 'category+attributes' needs attributes, but the catalogue has none")
    logger.info("training on %d images, validating on %d (%s)", len(rows.train), len(rows.validation),
                rows.validation_source)
    result = train_siamese(
        pooled[rows.train], [labels[i] for i in rows.train],
        pooled[rows.validation], [labels[i] for i in rows.validation], config,
        train_attributes=[attributes[i] for i in rows.train] if use_attributes else None,
        val_attributes=[attributes[i] for i in rows.validation] if use_attributes else None,
        progress=progress,
    )
    out = Path(out_dir)
    meta = {
        "base_encoder": encoder,
        "base_weights": None if weights is None else ("random" if str(weights) == "random"
                                                       else str(Path(weights).resolve())),
        "base_fingerprint": base.fingerprint(),
        "train_config": config.to_dict(),
        "threshold": result.threshold,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "categories": sorted({labels[i] for i in rows.train}),
        "n_train": len(rows.train),
        "n_validation": len(rows.validation),
        "validation_source": rows.validation_source,
        "feature_cache": str(cache.root),
    }
    save_model(out, result.model, meta, result.history)
    save_model_file(out, f"siamese:{out.resolve()}")
    save_training_curves(result.history, out / LOSS_PLOT, out / ACCURACY_PLOT, best_epoch=result.best_epoch)
    logger.info("saved the model, %s and plots to %s", HISTORY, out)
    return result, cache
