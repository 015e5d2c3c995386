"""Fine-tuning a pretrained backbone on a catalogue: ``fit_tuned`` (what ``clothsim train`` runs).

The protocol keeps the test split out of every choice: the network trains on the train split, the epoch
is picked by validation P@k (queries from the validation split against the train split as gallery),
and the test split is decoded only after training has finished and the model folder is written, for
the one final report (pretrained default against tuned, overall and per category). A catalogue with no
splits is split per category, seeded (test, then validation out of the rest).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clothsim.data.records import CatalogRecord, require_categories
from clothsim.defaults import (
    DEFAULT_GEM_P,
    DEFAULT_K,
    DEFAULT_SEED,
    DEFAULT_TUNE_BACKBONE,
    DEFAULT_TUNE_BACKBONE_LR_SCALE,
    DEFAULT_TUNE_BATCH_SIZE,
    DEFAULT_TUNE_EMA,
    DEFAULT_TUNE_EMBEDDING_DIM,
    DEFAULT_TUNE_EPOCHS,
    DEFAULT_TUNE_HIDDEN_DIM,
    DEFAULT_TUNE_LABELS,
    DEFAULT_TUNE_LOSS,
    DEFAULT_TUNE_LR,
    DEFAULT_TUNE_M,
    DEFAULT_TUNE_MEMBERS,
    DEFAULT_TUNE_PATIENCE,
    DEFAULT_TUNE_POOLING,
    DEFAULT_TUNE_SCHEDULE,
    DEFAULT_TUNE_TRAIN_LAYERS,
    DEFAULT_TUNE_VIEWS,
    DEFAULT_TUNE_WEIGHT_DECAY,
)
from clothsim.errors import DataError, UsageError
from clothsim.fileio import write_json
from clothsim.training.lower_outputs import AugmentConfig, CachedSplit, LowerPart, cache_split
from clothsim.training.model_folder import save_model_file
from clothsim.training.tuned_encoder import save_tuned
from clothsim.training.tuned_losses import build_loss
from clothsim.training.tuned_model import NetworkConfig, TunedMembers, TunedNetwork, backbone_layers, check_cut
from clothsim.training.tuned_sampler import MPerClassBatches

logger = logging.getLogger(__name__)

SCHEDULES = ("constant", "cosine")
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CURVES = "curves.png"


@dataclass(frozen=True)
class TuneConfig:
    """Everything a tuned training run depends on.

    Attributes:
        backbone: Pretrained encoder to fine-tune (``efficientnet_lite0`` or ``vgg16``).
        train_layers: Top backbone layers that learn (0: only pooling and head).
        cached_layers: Top layers computed at every step (the rest are cached); at least
            ``train_layers`` and 1; ``None`` for ``max(train_layers, 1)``.
        pooling: ``"gem"``, ``"avg"`` or ``"max"`` (the Siamese study's global max).
        gem_p: Initial GeM exponent; learn_p: whether it learns.
        hidden_dim: Head hidden width (0: one linear layer).
        embedding_dim: Output vector size.
        flip: The encoder averages each image with its mirror image (test-time augmentation).
        loss: One of :data:`clothsim.training.tuned_losses.LOSSES`, or several comma-separated, one per
            member in turn.
        members: Networks trained apart over the same cache (seed ``seed + i``, loss ``i`` of ``loss``)
            and saved as one encoder whose cosine is the mean of theirs (:class:`TunedMembers`).
        labels: ``"category"`` or ``"item"`` (item ids, where the catalogue has them).
        views: Cached views per training image (view 0 the plain centre crop).
        augment: How the other views are drawn.
        epochs: Most epochs; patience: epochs without a better validation P@k before stopping (0: off).
        batch_size: Rows per step; m: images per class in a batch.
        lr: AdamW learning rate of the head (and pooling); backbone_lr_scale: factor for backbone layers.
        weight_decay: AdamW weight decay.
        schedule: ``"constant"`` learning rate, or ``"cosine"`` decay to zero over ``epochs``.
        ema: Decay of an exponential moving average of the weights, kept per step and used for
            validation and the saved model (0: off, the raw weights).
        refit: Once each member's epoch is chosen on validation, train it again from a fresh start on
            the train and validation images together for that many epochs, and save those networks (a
            tenth more photos to learn from; their own validation P@k cannot be measured, so the
            selection run's is reported).
        k: The P@k that picks the epoch.
        val_fraction, test_fraction: Shares carved per category where the catalogue lacks those splits.
        seed: Seed of splits, views, batches and initialisation.
    """

    backbone: str = DEFAULT_TUNE_BACKBONE
    train_layers: int = DEFAULT_TUNE_TRAIN_LAYERS
    cached_layers: int | None = None
    pooling: str = DEFAULT_TUNE_POOLING
    gem_p: float = DEFAULT_GEM_P
    learn_p: bool = True
    hidden_dim: int = DEFAULT_TUNE_HIDDEN_DIM
    embedding_dim: int = DEFAULT_TUNE_EMBEDDING_DIM
    flip: bool = False
    loss: str = DEFAULT_TUNE_LOSS
    members: int = DEFAULT_TUNE_MEMBERS
    labels: str = DEFAULT_TUNE_LABELS
    views: int = DEFAULT_TUNE_VIEWS
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = DEFAULT_TUNE_EPOCHS
    patience: int = DEFAULT_TUNE_PATIENCE
    batch_size: int = DEFAULT_TUNE_BATCH_SIZE
    m: int = DEFAULT_TUNE_M
    lr: float = DEFAULT_TUNE_LR
    backbone_lr_scale: float = DEFAULT_TUNE_BACKBONE_LR_SCALE
    weight_decay: float = DEFAULT_TUNE_WEIGHT_DECAY
    schedule: str = DEFAULT_TUNE_SCHEDULE
    ema: float = DEFAULT_TUNE_EMA
    refit: bool = False
    k: int = DEFAULT_K
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = DEFAULT_SEED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TuneResult:
    """What :func:`fit_tuned` returns.

    Attributes:
        out_dir: The model folder.
        history: One dict per epoch (epoch 0: the untrained network and the pretrained default); with
            several members, each member's rows in turn, tagged ``member``.
        best_epoch: Epoch kept (best validation P@k; the first member's where there are several).
        val_precision: Validation P@k of the model saved (all members together).
        members: Per member: ``loss``, ``best_epoch`` and its own ``val_precision``.
        refit: Per member, with ``config.refit``: ``epochs`` and ``train_loss`` per epoch of the run on
            train and validation together, and ``rows`` (images it learnt from).
        report: The test report (``None`` when the catalogue has no test split or it was not asked for).
        seconds: Wall time of each phase (caching, training, test).
        failures: Paths that could not be decoded.
        lower_runtime: What ran the frozen lower part (``onnx`` or ``torch``).
    """

    out_dir: Path
    history: list[dict[str, Any]]
    best_epoch: int
    report: dict[str, Any] | None
    seconds: dict[str, float]
    failures: list[str]
    lower_runtime: str
    val_precision: float = 0.0
    members: list[dict[str, Any]] = field(default_factory=list)
    refit: list[dict[str, Any]] = field(default_factory=list)


def assign_splits(records: Sequence[CatalogRecord], val_fraction: float, test_fraction: float,
                  seed: int) -> list[CatalogRecord]:
    """The records with train/validation/test set: kept where given, carved per category where missing.

    Records of other splits (In-shop's query/gallery) are kept as they are.
    """
    from clothsim.data.splits import balanced_split

    records = list(records)
    if not records:
        raise DataError("the catalogue is empty")
    if all(r.split is None for r in records):
        records = balanced_split(records, test_fraction=test_fraction, seed=seed).records
    train = [r for r in records if r.split == "train"]
    if not any(r.split == "validation" for r in records) and train:
        carved = balanced_split(train, test_fraction=val_fraction, seed=seed + 1).records
        relabel = {id(old): replace(new, split="validation" if new.split == "test" else "train")
                   for old, new in zip(train, carved)}
        records = [relabel.get(id(r), r) for r in records]
    return records


def _labels(records: Sequence[CatalogRecord], by: str) -> np.ndarray:
    if by == "category":
        return np.array([r.category for r in records])
    if by == "item":
        missing = sum(r.item_id is None for r in records)
        if missing:
            raise DataError(f"--labels item needs item ids, but {missing} training image(s) have none")
        return np.array([r.item_id for r in records])
    raise UsageError(f"labels must be 'category' or 'item', got {by!r}")


def _class_codes(labels: np.ndarray) -> tuple[dict[Any, int], torch.Tensor]:
    """Each distinct label's class number (in sorted order), and the labels as those numbers."""
    code = {c: i for i, c in enumerate(sorted(set(labels.tolist())))}
    return code, torch.tensor([code[c] for c in labels])


def _embed_maps(network: TunedNetwork, maps: np.ndarray, device: torch.device, batch: int = 256) -> np.ndarray:
    out = []
    network.eval()
    with torch.no_grad():
        for start in range(0, len(maps), batch):
            chunk = torch.from_numpy(np.asarray(maps[start:start + batch], dtype=np.float32)).to(device)
            emb = network(chunk)
            if network.config.flip:
                emb = torch.nn.functional.normalize(emb + network(torch.flip(chunk, dims=[3])), dim=1)
            out.append(emb.cpu().numpy())
    return np.concatenate(out)


def _pretrained_vectors(upper: torch.nn.Module, maps: np.ndarray, device: torch.device,
                        batch: int = 256) -> np.ndarray:
    """The pretrained default's vectors (the original upper layers, average pooling) from cached maps."""
    out = []
    with torch.no_grad():
        for start in range(0, len(maps), batch):
            x = torch.from_numpy(np.asarray(maps[start:start + batch], dtype=np.float32)).to(device)
            out.append(torch.nn.functional.normalize(upper(x).mean(dim=(2, 3)), dim=1).cpu().numpy())
    return np.concatenate(out)


def _precision(queries: np.ndarray, q_labels: np.ndarray, gallery: np.ndarray, g_labels: np.ndarray,
               ks: Sequence[int]):
    from clothsim.metrics import evaluate_retrieval

    return evaluate_retrieval(queries, q_labels, gallery, g_labels, ks=ks)


def _check_options(config: TuneConfig, runtime: str) -> None:
    """Refuse out-of-range options before anything is read."""
    if runtime not in ("auto", "onnx", "torch"):
        raise UsageError(f"runtime must be auto, onnx or torch, got {runtime!r}")
    if config.epochs < 1 or config.views < 1 or config.k < 1 or config.members < 1:
        raise UsageError("epochs, views, k and members must be at least 1")
    if config.schedule not in SCHEDULES:
        raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}, got {config.schedule!r}")
    if not 0.0 <= config.ema < 1.0:
        raise UsageError(f"ema must lie in [0, 1), got {config.ema}")


def _training_splits(records: Sequence[CatalogRecord], config: TuneConfig
                     ) -> tuple[list[CatalogRecord], list[CatalogRecord], list[CatalogRecord], list[str]]:
    """The records with their splits, the train and validation splits, and the train categories."""
    records = assign_splits(records, config.val_fraction, config.test_fraction, config.seed)
    train = [r for r in records if r.split == "train"]
    val = [r for r in records if r.split == "validation"]
    if not train or not val:
        raise DataError(f"training needs a train and a validation split; got {len(train)} train and "
                        f"{len(val)} validation images")
    categories = sorted({r.category for r in train})
    if len(categories) < 2:
        raise DataError(f"training needs at least two categories; the train split has only {categories}")
    for member in range(config.members):  # an unknown loss fails before any caching
        build_loss(member_loss(config, member), 2, config.embedding_dim)
    return records, train, val, categories


def _member_meta(members: list[dict[str, Any]], refit: list[dict[str, Any]]) -> dict[str, Any]:
    """The model folder's entries about several members and a refit (none for a single plain run)."""
    meta: dict[str, Any] = {}
    if len(members) > 1:
        meta["member_runs"] = members  # "members" (their count) is written by save_tuned
    if refit:
        meta["refit"] = refit
        meta["val_p_measured_on"] = "the selection run (the saved network also learnt from validation)"
    return meta


def _lower_part(config: TuneConfig, weights: str | Path | None, runtime: str
                ) -> tuple[Any, list[torch.nn.Module], int, int, LowerPart]:
    """The backbone, its layers, their output channels, where they are cut and the frozen part below the cut."""
    from clothsim.encoders.factory import create_encoder

    backbone = create_encoder(config.backbone, weights=weights, device="cpu", runtime="torch")
    layers, channels = backbone_layers(backbone)
    cut = len(layers) - max(config.cached_layers or 0, config.train_layers, 1)
    check_cut(len(layers), cut, config.train_layers)
    part = LowerPart(backbone, torch.nn.Sequential(*layers[:cut]), cut)
    if runtime != "torch" and not part.use_onnx() and runtime == "onnx":
        raise UsageError("the onnx runtime could not run the lower part (see the log); use --runtime torch")
    return backbone, layers, channels, cut, part


def _member_network(member: int, upper_layers: list[torch.nn.Module], pretrained_upper: torch.nn.Module,
                    channels: int, net_config: NetworkConfig, config: TuneConfig, dev: torch.device) -> TunedNetwork:
    """The starting network of one member: member 0 trains the backbone's own upper layers, the others copies."""
    if member:  # member 0 keeps the single-network run's initialisation
        torch.manual_seed(config.seed + member)
    upper = upper_layers if member == 0 else copy.deepcopy(pretrained_upper).requires_grad_(True)
    return TunedNetwork(list(upper), channels, net_config).to(dev)


def _write_report(out: Path, report: dict[str, Any] | None, k: int) -> None:
    """The final test report, as JSON and Markdown, in the model folder."""
    if report is not None:
        write_json(out / REPORT_JSON, report)
        (out / REPORT_MD).write_text(_report_markdown(report, k), encoding="utf-8")


def _prepare_split(train_cache: CachedSplit, val_cache: CachedSplit, pretrained_upper: torch.nn.Module,
                   config: TuneConfig, dev: torch.device) -> tuple["_Split", float, list[int]]:
    """What every member trains and validates on, the pretrained default's validation P@k, and the ks reported."""
    y_train = _labels(train_cache.records, config.labels)
    y_val = _labels(val_cache.records, config.labels)
    code, target = _class_codes(y_train)
    # Validation labels that do not occur in train cannot be scored against it (In-shop items).
    val_known = np.isin(y_val, y_train)
    if not val_known.any():
        raise DataError("no validation image has a label that occurs in the train split")
    train_plain = np.asarray(train_cache.maps[:, 0])
    val_plain = np.asarray(val_cache.maps[:, 0])
    ks = sorted({1, config.k, 10})

    def val_scores(network: torch.nn.Module) -> tuple[float, np.ndarray]:
        """Validation P@k, and the embedded validation queries (the validation loss reuses them)."""
        queries = _embed_maps(network, val_plain, dev)[val_known]
        report = _precision(queries, y_val[val_known], _embed_maps(network, train_plain, dev), y_train, ks)
        return float(report.precision[config.k]), queries

    pre_report = _precision(_pretrained_vectors(pretrained_upper, val_plain, dev)[val_known], y_val[val_known],
                            _pretrained_vectors(pretrained_upper, train_plain, dev), y_train, ks)
    pretrained_p = float(pre_report.precision[config.k])
    split = _Split(train_cache.maps, target, y_train, y_val, val_known, code, len(code), val_scores)
    return split, pretrained_p, ks


def _together(trained: list["_Member"], split: "_Split", k: int) -> tuple["TunedNetwork | TunedMembers", float]:
    """The chosen network (the members together when there are several) and its validation P@k."""
    final: TunedNetwork | TunedMembers = (trained[0].network if len(trained) == 1
                                          else TunedMembers([result.network for result in trained]))
    final.eval()
    best = trained[0].best if len(trained) == 1 else split.val_scores(final)[0]
    if len(trained) > 1:
        logger.info("%d members: validation P@%d %.3f together (%s alone)", len(trained), k, best,
                    ", ".join(f"{result.best:.3f}" for result in trained))
    return final, best


def fit_tuned(records: Sequence[CatalogRecord], out_dir: str | Path, config: TuneConfig = TuneConfig(),
              *, weights: str | Path | None = None, device: str = "cpu", runtime: str = "auto",
              cache_dir: str | Path | None = None, num_workers: int = 1, evaluate_test: bool = True,
              progress: bool = False, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TuneResult:
    """Fine-tune ``config.backbone`` on ``records`` and write a model folder usable as ``tuned:OUT``.

    Args:
        records: The catalogue (with or without splits).
        out_dir: The model folder to write.
        config: The run's settings.
        weights: Backbone weights (``None``: the official pretrained ones).
        device: Torch device of the training (the lower part is cached on the CPU).
        runtime: What runs the frozen lower part while caching: ``auto`` (ONNX Runtime where it
            works), ``onnx`` or ``torch``.
        cache_dir: Folder of cached lower outputs (``None``: ``$CLOTHSIM_CACHE/tuned``).
        num_workers: Image-decoding processes while caching.
        evaluate_test: Write the final test report (the only step that reads the test split).
        progress: Progress bars.
        on_epoch: Called with each epoch's history row (after validation).

    Raises:
        DataError: fewer than two categories, an empty split, undecodable images only.
        UsageError: an unknown loss, backbone, pooling or out-of-range option.
    """
    require_categories(records, "clothsim train")
    from clothsim.user_dirs import default_cache_dir

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    _check_options(config, runtime)
    records, train, val, categories = _training_splits(records, config)

    torch.manual_seed(config.seed)
    backbone, layers, channels, cut, part = _lower_part(config, weights, runtime)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "tuned"

    def cache(rows: list[CatalogRecord], views: int, what: str) -> CachedSplit:
        return cache_split(part, rows, views, cache_root, config.augment, config.seed,
                           num_workers=num_workers, progress=progress, what=what)

    t0 = time.perf_counter()
    train_cache = cache(train, config.views, "train")
    # Validation is queried through its plain view 0; a refit also learns from its augmented views, so
    # they are cached with it, in the same single pass over the photos.
    val_cache = cache(val, config.views if config.refit else 1, "validation")
    seconds["cache"] = time.perf_counter() - t0
    logger.info("lower part (%s, %d layers, output %s) cached in %.1f s", part.runtime_used, cut,
                part.map_shape, seconds["cache"])

    net_config = NetworkConfig(backbone=config.backbone, cut=cut, train_layers=config.train_layers,
                               pooling=config.pooling, gem_p=config.gem_p, learn_p=config.learn_p,
                               hidden_dim=config.hidden_dim, embedding_dim=config.embedding_dim, flip=config.flip)
    dev = torch.device(device)
    # The untouched upper layers give the pretrained default's vectors, for the before/after figures.
    pretrained_upper = copy.deepcopy(torch.nn.Sequential(*layers[cut:])).to(dev).eval().requires_grad_(False)
    split, pretrained_p, ks = _prepare_split(train_cache, val_cache, pretrained_upper, config, dev)
    y_train = split.y_train
    t0 = time.perf_counter()
    trained = [_train_member(_member_network(member, layers[cut:], pretrained_upper, channels, net_config, config,
                                             dev), split, config, member, pretrained_p, dev, on_epoch)
               for member in range(config.members)]
    seconds["train"] = time.perf_counter() - t0
    history = [row for result in trained for row in result.history]
    final, best = _together(trained, split, config.k)
    refit: list[dict[str, Any]] = []
    if config.refit:
        t0 = time.perf_counter()
        final, refit = _refit(trained, train_cache, val_cache, y_train, pretrained_upper, channels, net_config,
                              config, dev)
        seconds["refit"] = time.perf_counter() - t0
    network = final

    out = Path(out_dir)
    members = [{"loss": member_loss(config, i), "best_epoch": result.best_epoch, f"val_p@{config.k}": result.best}
               for i, result in enumerate(trained)]
    meta = {"kind": "tuned", "backbone": config.backbone,
            "backbone_weights": str(Path(weights).resolve()) if weights not in (None, "random") else weights,
            "backbone_fingerprint": backbone.fingerprint(), "train_config": config.to_dict(),
            "categories": categories, "best_epoch": trained[0].best_epoch, f"best_val_p@{config.k}": best,
            "n_train": len(train_cache.records), "n_validation": len(val_cache.records),
            "lower_runtime": part.runtime_used, "seconds": dict(seconds),
            **_member_meta(members, refit)}
    save_tuned(out, network, meta, history)
    save_model_file(out, f"tuned:{out.resolve()}")
    _plot_curves(history, config.k, out / CURVES)

    report = None
    failures = train_cache.failures + val_cache.failures
    if evaluate_test:
        # The one and only read of the test split: after the model is chosen and written.
        t0 = time.perf_counter()
        report, test_failures = _test_report(records, train_cache, network, pretrained_upper, dev, config, cache, ks)
        failures += test_failures
        seconds["test"] = time.perf_counter() - t0
        _write_report(out, report, config.k)
    seconds["total"] = time.perf_counter() - started
    return TuneResult(out, history, trained[0].best_epoch, report, seconds, failures, part.runtime_used,
                      val_precision=best, members=members, refit=refit)


def _refit(trained: list["_Member"], train_cache: CachedSplit, val_views: CachedSplit, y_train: np.ndarray,
           pretrained_upper: torch.nn.Module, channels: int, net_config: NetworkConfig, config: TuneConfig,
           dev: torch.device) -> tuple["TunedNetwork | TunedMembers", list[dict[str, Any]]]:
    """Each member trained again from a fresh start on train plus validation, for its chosen epochs."""
    maps = np.concatenate([np.asarray(train_cache.maps), np.asarray(val_views.maps)])
    labels = np.concatenate([y_train, _labels(val_views.records, config.labels)])
    networks, runs = [], []
    for member, result in enumerate(trained):
        torch.manual_seed(config.seed + member)
        network = TunedNetwork(list(copy.deepcopy(pretrained_upper).requires_grad_(True)), channels,
                               net_config).to(dev)
        network, losses = _refit_member(network, maps, labels, config, member, result.best_epoch, dev)
        networks.append(network)
        runs.append({"member": member, "epochs": result.best_epoch, "rows": int(len(labels)), "train_loss": losses})
    logger.info("refit on train and validation (%d images): %s epoch(s)", len(labels),
                ", ".join(str(run["epochs"]) for run in runs))
    final = networks[0] if len(networks) == 1 else TunedMembers(networks)
    final.eval()
    return final, runs


@dataclass
class _Split:
    """What every member trains and validates on."""

    train_maps: np.ndarray
    target: torch.Tensor
    y_train: np.ndarray
    y_val: np.ndarray
    val_known: np.ndarray
    code: dict[Any, int]
    n_classes: int
    val_scores: Callable[[torch.nn.Module], tuple[float, np.ndarray]]


@dataclass
class _Member:
    network: TunedNetwork
    history: list[dict[str, Any]]
    best_epoch: int
    best: float


def member_loss(config: TuneConfig, member: int) -> str:
    """Member ``i`` trains with the ``i``-th of ``config.loss``'s comma-separated losses (cycling)."""
    names = [name.strip() for name in config.loss.split(",") if name.strip()]
    return names[member % len(names)]


def _train_member(network: TunedNetwork, split: _Split, config: TuneConfig, member: int, pretrained_p: float,
                  dev: torch.device, on_epoch: Callable[[dict[str, Any]], None] | None) -> _Member:
    """Train one network (seed ``config.seed + member``); keep the epoch of best validation P@k."""
    loss_name = member_loss(config, member)
    steps = _Steps(network, split.train_maps, split.y_train, split.target, split.n_classes, config, member, dev)
    loss_fn, scored = steps.loss_fn, steps.scored
    tag = {"member": member} if config.members > 1 else {}

    def validate() -> tuple[float, float]:
        p, queries = split.val_scores(scored)
        with torch.no_grad():
            val_target = torch.tensor([split.code.get(c, -1) for c in split.y_val[split.val_known]])
            val_loss = float(loss_fn(torch.from_numpy(queries).to(dev), val_target.to(dev)))
        return p, val_loss

    p0, l0 = validate()
    history: list[dict[str, Any]] = [{**tag, "epoch": 0, "train_loss": None, "val_loss": l0,
                                      f"val_p@{config.k}": p0, f"pretrained_val_p@{config.k}": pretrained_p,
                                      "seconds": 0.0}]
    logger.info("%sepoch 0: val P@%d %.3f untrained, %.3f pretrained default", _prefix(config, member, loss_name),
                config.k, p0, pretrained_p)
    best, best_epoch, best_state, waited = p0, 0, copy.deepcopy(scored.state_dict()), 0
    for epoch in range(1, config.epochs + 1):
        t_epoch = time.perf_counter()
        train_loss = steps.epoch(epoch)
        p, val_loss = validate()
        row = {**tag, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
               f"val_p@{config.k}": p, "seconds": time.perf_counter() - t_epoch}
        if config.pooling == "gem":
            row["gem_p"] = float(scored.pool.p.detach())
        history.append(row)
        logger.info("%sepoch %d: train loss %.4f, val loss %.4f, val P@%d %.3f (%.1f s)",
                    _prefix(config, member, loss_name), epoch, row["train_loss"], val_loss, config.k, p,
                    row["seconds"])
        if on_epoch is not None:
            on_epoch(row)
        if p > best:
            best, best_epoch, best_state, waited = p, epoch, copy.deepcopy(scored.state_dict()), 0
        else:
            waited += 1
            if config.patience and waited >= config.patience:
                logger.info("stopping: no better validation P@%d for %d epochs", config.k, waited)
                break
    network.load_state_dict(best_state)
    network.eval()
    return _Member(network, history, best_epoch, best)


class _Steps:
    """One member's optimiser, schedule and weight average over one set of cached training maps.

    ``scored`` is the network validation scores and the model folder saves: the averaged copy with
    ``config.ema`` (on a few thousand photos the raw weights' validation P@k swings by a point or two
    from one epoch to the next), else the network itself.
    """

    def __init__(self, network: TunedNetwork, maps: np.ndarray, labels: np.ndarray, target: torch.Tensor,
                 n_classes: int, config: TuneConfig, member: int, dev: torch.device) -> None:
        seed = config.seed + member
        self.network, self.maps, self.target, self.config, self.dev = network, maps, target, config, dev
        self.sampler = MPerClassBatches(labels, m=config.m, batch_size=config.batch_size, seed=seed)
        self.loss_fn = build_loss(member_loss(config, member), n_classes, config.embedding_dim).to(dev)
        backbone_params = [p for p in network.upper.parameters() if p.requires_grad]
        groups = [{"params": list(network.pool.parameters()) + list(network.head.parameters()), "lr": config.lr}]
        if backbone_params:
            groups.append({"params": backbone_params, "lr": config.lr * config.backbone_lr_scale})
        if list(self.loss_fn.parameters()):
            # Proxies start random and must move fast (the proxy-anchor paper uses 100x the backbone rate).
            groups.append({"params": list(self.loss_fn.parameters()), "lr": config.lr * 10})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        steps = config.epochs * len(self.sampler)
        self.scheduler = (torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps)))
            if config.schedule == "cosine" else None)
        self.averaged = (torch.optim.swa_utils.AveragedModel(
            network, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema), use_buffers=True)
            if config.ema else None)
        self.scored = network if self.averaged is None else self.averaged.module
        self.rng = np.random.default_rng([seed, 1])

    def epoch(self, epoch: int) -> float:
        """Train one epoch (class-balanced batches, a random cached view of each image); its mean loss."""
        network, rng, dev = self.network, self.rng, self.dev
        network.train()
        losses = []
        for rows in self.sampler.batches(epoch):
            views = rng.integers(0, self.config.views, size=rows.size)
            x = torch.from_numpy(np.asarray(self.maps[rows, views], dtype=np.float32)).to(dev)
            mirror = torch.from_numpy(rng.random(rows.size) < 0.5).to(dev)
            # A mirrored feature map is close to the map of the mirrored image: a free extra view.
            x = torch.where(mirror[:, None, None, None], torch.flip(x, dims=[3]), x)
            loss = self.loss_fn(network(x), self.target[rows].to(dev))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            if self.averaged is not None:
                self.averaged.update_parameters(network)
            losses.append(float(loss.detach()))
        return float(np.mean(losses))


def _refit_member(network: TunedNetwork, maps: np.ndarray, labels: np.ndarray, config: TuneConfig, member: int,
                  epochs: int, dev: torch.device) -> tuple[TunedNetwork, list[float]]:
    """Train a fresh network on ``maps`` (train and validation) for the ``epochs`` validation chose."""
    code, target = _class_codes(labels)
    steps = _Steps(network, maps, labels, target, len(code), config, member, dev)
    losses = []
    for epoch in range(1, epochs + 1):
        t_epoch = time.perf_counter()
        losses.append(steps.epoch(epoch))
        logger.info("%srefit epoch %d/%d: train loss %.4f (%.1f s)", _prefix(config, member, member_loss(config, member)),
                    epoch, epochs, losses[-1], time.perf_counter() - t_epoch)
    scored = steps.scored
    scored.eval()
    return scored, losses


def _prefix(config: TuneConfig, member: int, loss_name: str) -> str:
    return f"member {member + 1}/{config.members} ({loss_name}): " if config.members > 1 else ""


def _test_report(records: Sequence[CatalogRecord], train_cache: CachedSplit, network: TunedNetwork,
                 pretrained_upper: torch.nn.Module, dev: torch.device, config: TuneConfig, cache: Callable, ks: Sequence[int]):
    queries = [r for r in records if r.split == "test"]
    if queries:
        gallery_cache = train_cache
        protocol = ("test", "train")
    else:
        queries = [r for r in records if r.split == "query"]
        gallery = [r for r in records if r.split == "gallery"]
        if not queries or not gallery:
            logger.info("no test split: no test report")
            return None, []
        gallery_cache = cache(gallery, 1, "gallery")
        protocol = ("query", "gallery")
    test_cache = cache(queries, 1, protocol[0])
    g_maps = np.asarray(gallery_cache.maps[:, 0])
    q_maps = np.asarray(test_cache.maps[:, 0])
    g_labels = np.array([r.category for r in gallery_cache.records])
    q_labels = np.array([r.category for r in test_cache.records])
    tuned = _precision(_embed_maps(network, q_maps, dev), q_labels, _embed_maps(network, g_maps, dev), g_labels, ks)
    pretrained = _precision(_pretrained_vectors(pretrained_upper, q_maps, dev), q_labels,
                            _pretrained_vectors(pretrained_upper, g_maps, dev), g_labels, ks)
    report = {"protocol": {"queries": protocol[0], "gallery": protocol[1]},
              "n_queries": tuned.n_queries, "n_gallery": tuned.n_gallery,
              "pretrained": pretrained.to_dict(), "tuned": tuned.to_dict(), "k": config.k}
    return report, test_cache.failures + (gallery_cache.failures if gallery_cache is not train_cache else [])


def _report_markdown(report: dict[str, Any], k: int) -> str:
    pre, tuned = report["pretrained"], report["tuned"]
    lines = [f"# Test split: {report['protocol']['queries']} queried against {report['protocol']['gallery']}",
             "", f"{report['n_queries']} queries, {report['n_gallery']} gallery images.", "",
             "| | " + " | ".join(f"P@{kk}" for kk in pre["precision"]) + " | mAP@10 |",
             "|---|" + "---|" * (len(pre["precision"]) + 1)]
    for name, rep in (("pretrained default", pre), ("tuned", tuned)):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in rep["precision"].values())
                     + f" | {rep['map_at_k']:.3f} |")
    lines += ["", f"Per category, P@{k}:", "", "| category | queries | pretrained | tuned | change |",
              "|---|---|---|---|---|"]
    for cat, values in sorted(tuned["per_category_precision"].items()):
        before = pre["per_category_precision"][cat][str(k)]
        after = values[str(k)]
        lines.append(f"| {cat} | {tuned['category_counts'][cat]} | {before:.3f} | {after:.3f} | "
                     f"{after - before:+.3f} |")
    return "\n".join(lines) + "\n"


def _plot_curves(history: list[dict[str, Any]], k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clothsim.fileio import atomic_path

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    members = sorted({h.get("member", 0) for h in history})
    for member in members:
        rows = [h for h in history if h.get("member", 0) == member]
        name = f"member {member + 1} " if len(members) > 1 else ""
        epochs = [h["epoch"] for h in rows]
        ax1.plot([h["epoch"] for h in rows if h["train_loss"] is not None],
                 [h["train_loss"] for h in rows if h["train_loss"] is not None], label=f"{name}train")
        ax1.plot(epochs, [h["val_loss"] for h in rows], label=f"{name}validation")
        ax2.plot(epochs, [h[f"val_p@{k}"] for h in rows], marker="o", label=f"{name}tuned")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.axhline(history[0][f"pretrained_val_p@{k}"], color="grey", linestyle="--", label="pretrained default")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(f"validation P@{k}")
    ax2.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
