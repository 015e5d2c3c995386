"""Compare encoders on one catalogue: extract (cached), evaluate, draw, and write the report folder."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clothsim.defaults import (
    DEFAULT_EVALUATE_ENCODERS,
    DEFAULT_GRID_QUERIES,
    DEFAULT_INSTANCE_QUERIES,
    DEFAULT_K,
    DEFAULT_TSNE_POINTS,
)
from clothsim.data.query_gallery import PROTOCOLS, choose_protocol, pick_grid_queries  # noqa: F401 (re-exported)
from clothsim.data.records import CatalogRecord, require_categories
from clothsim.encoders.base import Encoder
from clothsim.encoders.factory import create_encoder
from clothsim.errors import DataError, EmptyCatalogError, UsageError, WeightsUnavailableError
from clothsim.evaluation import plots
from clothsim.evaluation.backends import RECALL_K, check_backends, evaluate_backend
from clothsim.evaluation.labels import evaluate_labels
from clothsim.evaluation.instance import (
    INSTANCE_SPLIT,
    InstanceResult,
    copies_folder,
    instance_recall,
    make_altered_copies,
)
from clothsim.evaluation.requirements import Checked, check_encoders
from clothsim.evaluation.split_stores import (
    encoder_slug,
    extract_split,
    records_of_split,
    split_store_dir,
)
from clothsim.evaluation.results import (
    Comparison,
    EncoderResult,
    SkippedEncoder,
    relative,
)
from clothsim.features.store import FeatureStore, StoredItem
from clothsim.index.base import SearchHit
from clothsim.metrics import confusion_top1, evaluate_retrieval, rank
from clothsim.zero_shot import LabelList

logger = logging.getLogger(__name__)

DEFAULT_ENCODERS = DEFAULT_EVALUATE_ENCODERS  # the public name in clothsim.evaluation
KS = (1, 5, 10)
HEATMAP_K = 5


class _Prepared:
    """An encoder whose stores for the needed splits exist in the cache."""

    def __init__(self, encoder: Encoder, label: str, dirs: dict[str | None, Path], reused: bool,
                 details: dict[str, Any]) -> None:
        self.encoder, self.label, self.dirs, self.reused, self.details = encoder, label, dirs, reused, details


def _prepare_plain(name: str, records, splits, cache, part_weights, device, options,
                   encoder: Encoder | None = None) -> _Prepared:
    if encoder is None:
        encoder = create_encoder(name, weights=part_weights.get(name), device=device)
    reused = True
    for split in splits:
        report = extract_split(records, split, encoder, cache, weights=part_weights.get(name), **options)
        reused &= report.reused
    dirs = {split: split_store_dir(cache, encoder.name, split) for split in splits}
    details = {"weights_source": str(part_weights[name]) if part_weights.get(name) else None}
    return _Prepared(encoder, encoder.name, dirs, reused, details)


def _prepare_ensemble(name: str, records, splits, cache, part_weights, device, options) -> _Prepared:
    from clothsim.ensemble import (
        EnsembleModel,
        build_store_from_parts,
        fit_from_catalog,
        load_ensemble_encoder,
    )

    spec = name.partition(":")[2]
    details: dict[str, Any] = {}
    if EnsembleModel.is_model_dir(spec):
        folder = Path(spec)
    elif "+" in spec:
        # A parts list rather than a fitted folder: fit it here, on this catalogue's train/validation.
        folder = Path(cache) / "ensembles" / encoder_slug(spec)
        if not any(r.split == "train" for r in records):
            raise DataError(f"{name}: fitting an ensemble needs a train split; fit one elsewhere with "
                             "`clothsim fit-ensemble` and pass ensemble:FOLDER")
        model = fit_from_catalog(records, spec.split("+"), cache, weight_files=part_weights, device=device,
                                 **options)
        model.save(folder)
        details["fitted_now_in"] = str(folder)
    else:
        raise UsageError(f"{name}: {spec} is neither a fitted ensemble folder nor a parts list like "
                         "ensemble:vgg16+efficientnet_lite0")
    model = EnsembleModel.load(folder)
    overrides = ",".join(f"{p.name}={part_weights[p.name]}" for p in model.parts if part_weights.get(p.name))
    encoder = load_ensemble_encoder(folder, weights=overrides or None, device=device)
    dirs = {}
    for split in splits:
        part_dirs = []
        for spec_part, part in zip(model.parts, encoder.parts):
            weights = part_weights.get(spec_part.name, spec_part.weights_source)
            extract_split(records, split, part, cache, weights=weights, **options)
            part_dirs.append(split_store_dir(cache, part.name, split))
        dirs[split] = split_store_dir(cache, encoder.name, split)
        build_store_from_parts(encoder, records_of_split(records, split), part_dirs, dirs[split])
    details.update({"folder": str(folder), "parts": [p.name for p in model.parts],
                    "part_weights": list(model.weights), "method": model.method,
                    "weights_chosen_by": model.info.get("weights_chosen_by"),
                    "fit_sha256": model.fit_sha256()})
    return _Prepared(encoder, model.label, dirs, True, details)


def _throughput(stores: Sequence[FeatureStore], reused: bool, ensemble: bool) -> tuple[float | None, str]:
    stats = [s.manifest.get("extraction") for s in stores]
    if any(not st or not st.get("images_per_second") for st in stats):
        return None, "not recorded (store built by an older clothsim)"
    if ensemble:
        rows = np.array([len(s) for s in stores], dtype=np.float64)
        speeds = np.array([st["images_per_second"] for st in stats], dtype=np.float64)
        return float((rows * speeds).sum() / rows.sum()), "parts' per-image times added up"
    images = sum(st["n_encoded"] for st in stats)
    seconds = sum(st["seconds"] for st in stats)
    source = "recorded when the cached stores were built" if reused else "measured in this run"
    return images / seconds, source


def _labels(items: Sequence[StoredItem]) -> list[str]:
    return [it.record.category for it in items]


def _item_ids(items: Sequence[StoredItem]) -> list[str] | None:
    ids = [it.record.item_id for it in items]
    return None if any(i is None for i in ids) else ids


def _pick_grid_queries(queries: Sequence[CatalogRecord], n: int, seed: int) -> list[str]:
    """Paths of ``n`` seeded queries spread over categories (the rule shared with the demo)."""
    return [queries[i].path for i in pick_grid_queries(queries, n, seed)]


def compare_encoders(
    records: Sequence[CatalogRecord],
    encoders: Sequence[str],
    out_dir: str | Path,
    *,
    cache: str | Path | None = None,
    part_weights: dict[str, str] | None = None,
    data_name: str = "catalogue",
    device: str = "cpu",
    grid_queries: int = DEFAULT_GRID_QUERIES,
    grid_k: int = DEFAULT_K,
    tsne_points: int = DEFAULT_TSNE_POINTS,
    seed: int = 0,
    backends: Sequence[str] = (),
    backend_options: dict[str, dict[str, Any]] | None = None,
    instance_queries: int | None = DEFAULT_INSTANCE_QUERIES,
    labels: LabelList | None = None,
    **extract_options: Any,
) -> Comparison:
    """Evaluate every encoder on the same queries and gallery and draw the comparison charts.

    The protocol is the test split against the train split (else query/gallery, else validation
    against train), or leave-one-out over all records when there are no such splits. Encoders whose
    weights cannot be had are recorded as skipped with the reason, not dropped.

    Args:
        records: The catalogue.
        encoders: Encoder names; ``ensemble:FOLDER`` for a fitted ensemble, or
            ``ensemble:a+b`` to fit one here on the train/validation splits.
        out_dir: Report folder (charts go to ``<out_dir>/images``).
        cache: Feature store cache (default ``<out_dir>/stores``); complete stores are reused.
        part_weights: ``{encoder name: weights}`` as for :func:`~clothsim.encoders.create_encoder`.
        data_name: How the report names the catalogue.
        device: Torch device.
        grid_queries: Queries shown in each encoder's result grid (the same for every encoder).
        grid_k: Hits per query in the grids.
        tsne_points: Points in the t-SNE maps (seeded subsample); 0 leaves the maps out.
        seed: Seed of every sample.
        backends: Index backends to measure on each encoder's gallery (e.g. ``["faiss-hnsw", "milvus"]``):
            each is built over the gallery, searched with the same queries and scored like exact search,
            with its recall@10 against exact search.
        backend_options: ``{backend: {option: value}}``.
        instance_queries: Gallery photos (a seeded sample) whose altered copies are queried against the
            gallery for the instance guard's recall@1 (see :mod:`clothsim.evaluation.instance`); ``None``
            for every gallery photo, 0 to leave the guard out.
        labels: Labels to score: each encoder with a text tower labels the queries (:mod:`.labels`).
        extract_options: For :func:`~clothsim.features.extract_features` (batch_size, num_workers, ...).

    Returns:
        The :class:`~clothsim.evaluation.results.Comparison` (the report files are written by
        :func:`clothsim.evaluation.report.write_report`).

    Every requirement (encoder names, weights files, ensembles' splits, backends and their options,
    a database server's address) is checked before the first image is encoded.

    Raises:
        EmptyCatalogError: ``records`` is empty.
        UsageError: No encoders, repeated names, an unknown encoder or backend, a bad backend option.
        DataError: An ensemble to fit on a catalogue without a train split.
    """
    _check_inputs(records, encoders)
    out_dir = Path(out_dir)
    cache = Path(cache) if cache is not None else out_dir / "stores"
    part_weights, backends = dict(part_weights or {}), list(backends)
    backend_options = {name: dict((backend_options or {}).get(name, {})) for name in backends}
    check_backends(backends, backend_options)  # all of it before the first image is encoded
    checked = check_encoders(records, encoders, part_weights, device)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    query_split, gallery_split = choose_protocol(records)
    loo = query_split is None
    splits: list[str | None] = [None] if loo else [query_split, gallery_split]
    queries, gallery = records_of_split(records, query_split), records_of_split(records, gallery_split)
    protocol = _describe_protocol(len(records), query_split, len(queries), gallery_split, len(gallery))
    settings = {"ks": list(KS), "map_k": 10, "heatmap_k": HEATMAP_K, "seed": seed, "grid_queries": grid_queries,
                "grid_k": grid_k, "tsne_points": tsne_points, "cache": str(cache), "backends": backends,
                "backend_options": backend_options, "instance_queries": instance_queries,
                "labels": list(labels.labels) if labels else None}
    comparison = Comparison(data_name, protocol, loo, query_split, gallery_split, settings=settings)
    _draw_categories(comparison, records, out_dir)
    grid_paths = _pick_grid_queries(queries, grid_queries, seed)
    tsne_paths = _tsne_sample(records, loo, splits, tsne_points, seed)
    maps: list[tuple[str, np.ndarray, list[str]]] = []
    all_categories = sorted({r.category for r in queries} | {r.category for r in gallery})
    copies = _altered_copies(gallery, cache, instance_queries, seed, bool(extract_options.get("use_bbox", True)))

    for name in encoders:
        prepared = _prepare(name, checked, comparison, records, splits, cache, part_weights, device, extract_options)
        if prepared is None:
            continue
        result, tsne, gallery_rows = _evaluate_one(name, prepared, loo, splits, all_categories, grid_paths, grid_k,
                                                   tsne_paths, out_dir, comparison)
        _add_checks(result, prepared, gallery_rows, copies, labels, backend_options, cache=cache, seed=seed, loo=loo,
                    splits=splits, extract_options=extract_options)
        comparison.results.append(result)
        if tsne is not None:
            maps.append(tsne)

    if comparison.results:
        _draw_summary(comparison, all_categories, maps, out_dir)
    return comparison


def _add_checks(result: EncoderResult, prepared: _Prepared, gallery_rows: tuple[np.ndarray, Sequence[StoredItem]],
                copies: Sequence[CatalogRecord], labels: LabelList | None, backend_options: dict[str, dict[str, Any]],
                *, cache: Path, seed: int, loo: bool, splits: list[str | None],
                extract_options: dict[str, Any]) -> None:
    """What is measured beside the retrieval metrics, where asked for: the instance guard, labels from a
    list, and each index backend (in the order given)."""
    if copies:
        result.instance = _evaluate_instance(prepared, copies, cache, gallery_rows, seed, extract_options)
    if labels is not None:
        result.labels = evaluate_labels(prepared.encoder, prepared.dirs[splits[0]], labels)
    for backend, options in backend_options.items():
        result.backends.append(_evaluate_backend(backend, options, prepared, loo, splits))


def _draw_categories(comparison: Comparison, records: Sequence[CatalogRecord], out_dir: Path) -> None:
    """The chart of the catalogue's category sizes."""
    from clothsim.data.plots import plot_category_distribution

    comparison.figures["category_distribution"] = relative(
        plot_category_distribution(records, out_dir / "images" / "category_distribution.png"), out_dir)


def _describe_protocol(n_records: int, query_split: str | None, n_queries: int, gallery_split: str | None,
                       n_gallery: int) -> str:
    """How the report names the protocol."""
    if query_split is None:
        return f"leave-one-out over all {n_records} images"
    return f"{query_split} split ({n_queries} images) against {gallery_split} split ({n_gallery} images)"


def _tsne_sample(records: Sequence[CatalogRecord], loo: bool, splits: list[str | None], tsne_points: int,
                 seed: int) -> set[str]:
    """The seeded sample of photos drawn in the t-SNE maps."""
    if tsne_points <= 0:
        return set()
    pool = sorted({r.path for r in records_of_split(records, None) if loo or r.split in splits})
    return set(random.Random(seed).sample(pool, min(tsne_points, len(pool))))


def _check_inputs(records: Sequence[CatalogRecord], encoders: Sequence[str]) -> None:
    """Refuse a catalogue without categories or images, and an empty or repeating list of encoders."""
    require_categories(records, "clothsim evaluate")
    if not records:
        raise EmptyCatalogError("the catalogue has no images to evaluate")
    if not encoders:
        raise UsageError("give at least one encoder to compare")
    if len(set(encoders)) != len(encoders):
        raise UsageError(f"encoders are repeated: {list(encoders)}")


def _altered_copies(gallery: list[CatalogRecord], cache: Path, instance_queries: int | None, seed: int,
                    use_bbox: bool) -> list[CatalogRecord]:
    """The altered copies of gallery photos the instance guard queries (none when it is left out)."""
    if instance_queries is not None and instance_queries <= 0:
        return []
    return make_altered_copies(gallery, copies_folder(cache, gallery, instance_queries, seed, use_bbox),
                               limit=instance_queries, seed=seed, use_bbox=use_bbox)


def _prepare(name: str, checked: Checked, comparison: Comparison, records, splits, cache: Path,
             part_weights: dict[str, str], device: str, extract_options: dict[str, Any]) -> _Prepared | None:
    """The stores of one encoder (fitting it first when it is an ensemble to fit); ``None`` when it is
    skipped, which ``comparison`` records with the reason."""
    if name in checked.skipped:
        logger.warning("skipping %s: %s", name, checked.skipped[name])
        comparison.skipped.append(SkippedEncoder(name, checked.skipped[name]))
        return None
    try:
        if name.startswith("ensemble:"):
            return _prepare_ensemble(name, records, splits, cache, part_weights, device, extract_options)
        return _prepare_plain(name, records, splits, cache, part_weights, device, extract_options,
                              encoder=checked.encoders.pop(name, None))
    except WeightsUnavailableError as exc:
        logger.warning("skipping %s: %s", name, exc)
        comparison.skipped.append(SkippedEncoder(name, str(exc)))
        return None


def _draw_summary(comparison: Comparison, all_categories: list[str], maps: list[tuple[str, np.ndarray, list[str]]],
                  out_dir: Path) -> None:
    """The charts across encoders: precision bars, the per-category heatmap and the t-SNE maps."""
    images_dir = out_dir / "images"
    labels = [r.label for r in comparison.results]
    comparison.figures["precision"] = relative(plots.plot_precision_bars(
        labels, [r.report.precision for r in comparison.results], images_dir / "precision.png",
        chance=comparison.results[0].report.chance_precision), out_dir)
    heat = np.array([[r.report.per_category_precision.get(c, {}).get(HEATMAP_K, np.nan) for c in all_categories]
                     for r in comparison.results])
    comparison.figures["category_heatmap"] = relative(plots.plot_category_heatmap(
        labels, all_categories, heat, images_dir / "category_heatmap.png", k=HEATMAP_K), out_dir)
    if maps:
        comparison.figures["tsne"] = relative(plots.plot_embedding_maps(maps, images_dir / "tsne.png"), out_dir)


def _evaluate_backend(backend: str, options: dict[str, Any], prepared: _Prepared, loo: bool, splits):
    """One backend over this encoder's gallery store, scored against the exact ranking."""
    query_store = FeatureStore.open(prepared.dirs[splits[0]])
    gallery_store = query_store if loo else FeatureStore.open(prepared.dirs[splits[1]])
    q_vec, q_items = query_store.load_vectors()
    g_vec, g_items = (q_vec, q_items) if loo else gallery_store.load_vectors()
    rows, _ = rank(q_vec, None if loo else g_vec, RECALL_K, leave_one_out=loo)
    gallery_ids = np.array([it.id for it in g_items], dtype=np.int64)
    exact_ids = gallery_ids[rows] if rows.size else np.zeros((len(q_items), 0), dtype=np.int64)
    return evaluate_backend(backend, options, gallery_store, q_vec, q_items, exact_ids, loo, KS, 10)


def _evaluate_instance(prepared: _Prepared, copies: Sequence[CatalogRecord], cache: Path,
                       gallery_rows: tuple[np.ndarray, Sequence[StoredItem]], seed: int,
                       extract_options: dict[str, Any]) -> InstanceResult | None:
    """The instance guard for one encoder: its vectors of the altered copies against its gallery (the
    vectors and items :func:`_evaluate_one` already loaded)."""
    extract_split(copies, INSTANCE_SPLIT, prepared.encoder, cache, **extract_options)
    copy_vec, copy_items = FeatureStore.open(split_store_dir(cache, prepared.encoder.name, INSTANCE_SPLIT)).load_vectors()
    g_vec, g_items = gallery_rows
    result = instance_recall(copy_vec, [it.record.item_id for it in copy_items], g_vec,
                             [it.record.path for it in g_items], seed=seed)
    if result is not None:
        logger.info("%s: instance guard recall@1 %.3f over %d altered copies", prepared.label,
                    result.recall_at_1, result.n_queries)
    return result


def _evaluate_one(name, prepared: _Prepared, loo, splits, categories, grid_paths, grid_k, tsne_paths,
                  out_dir: Path, comparison: Comparison):
    stores = {split: FeatureStore.open(prepared.dirs[split]) for split in splits}
    if loo:
        q_vec, q_items = stores[None].load_vectors()
        g_vec, g_items = q_vec, q_items
    else:
        q_vec, q_items = stores[splits[0]].load_vectors()
        g_vec, g_items = stores[splits[1]].load_vectors()
    q_ids, g_ids = _item_ids(q_items), _item_ids(g_items)
    with_ids = q_ids is not None and g_ids is not None
    report = evaluate_retrieval(q_vec, _labels(q_items), None if loo else g_vec, None if loo else _labels(g_items),
                                ks=KS, map_k=10, query_item_ids=q_ids if with_ids else None,
                                gallery_item_ids=None if loo or not with_ids else g_ids, leave_one_out=loo)
    rows, scores = rank(q_vec, None if loo else g_vec, grid_k, leave_one_out=loo)
    top1 = [g_items[int(r)].record.category for r in rows[:, 0]]
    matrix, order = confusion_top1(_labels(q_items), top1, categories=categories)
    speed, source = _throughput(list(stores.values()), prepared.reused, name.startswith("ensemble:"))
    n_failed = len({f["path"] for s in stores.values() for f in s.failures})

    slug = encoder_slug(prepared.label)
    images = out_dir / "images"
    comparison.confusions[prepared.label] = relative(plots.plot_confusion(
        matrix, order, f"{prepared.label}: top-1 category confusion", images / f"confusion-{slug}.png"), out_dir)
    row_of = {it.record.path: i for i, it in enumerate(q_items)}
    picked = [row_of[p] for p in grid_paths if p in row_of]
    if picked:
        from clothsim.viz.grid import QueryResult, save_result_grid

        results = [QueryResult(q_items[i].record.path,
                               [SearchHit(j + 1, g_items[int(r)].id, float(s), g_items[int(r)].record)
                                for j, (r, s) in enumerate(zip(rows[i], scores[i]))],
                               category=q_items[i].record.category)
                   for i in picked]
        comparison.grids[prepared.label] = relative(save_result_grid(results, images / f"grid-{slug}.png"), out_dir)

    tsne = None
    if tsne_paths:
        pairs = [(v, it.record.category) for v, it in zip(q_vec, q_items) if it.record.path in tsne_paths]
        if not loo:
            pairs += [(v, it.record.category) for v, it in zip(g_vec, g_items) if it.record.path in tsne_paths]
        if len(pairs) >= 5:
            xy = plots.embedding_map(np.stack([v for v, _ in pairs]), seed=int(comparison.settings["seed"]))
            tsne = (prepared.label, xy, [c for _, c in pairs])
    result = EncoderResult(name, prepared.label, prepared.encoder.dim, report, matrix, list(order), speed, source,
                           n_failed, {str(k or "all"): str(v) for k, v in prepared.dirs.items()}, prepared.details)
    return result, tsne, (g_vec, g_items)
