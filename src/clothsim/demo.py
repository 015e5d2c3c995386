"""The main job, end to end: build an index, query held-out images, measure, draw a results grid."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from clothsim.data.query_gallery import choose_protocol, pick_grid_queries
from clothsim.data.records import CatalogRecord, require_categories
from clothsim.defaults import DEFAULT_ENCODER, DEFAULT_RUNTIME
from clothsim.encoders.factory import create_encoder
from clothsim.errors import EmptyCatalogError
from clothsim.features.extract import ExtractionReport, extract_features
from clothsim.features.store import FeatureStore
from clothsim.metrics import RetrievalReport, evaluate_retrieval
from clothsim.similarity_index import SimilarityIndex
from clothsim.viz.grid import QueryResult, save_result_grid

logger = logging.getLogger(__name__)

#: The bundled real-photo sample (package data): ``train/<category>/*.jpg`` and ``test/<category>/*.jpg``.
CLOTHING_SAMPLE_DIR = Path(__file__).resolve().parent / "assets" / "clothing_sample"

#: The ``--data`` name of the bundled Fashion-MNIST sample (unless a path of that name exists).
FASHION_MNIST_NAME = "fashion-mnist"

#: The steps :attr:`DemoResult.timings` holds, in the order they run.
STEPS = ("encoder", "index", "queries", "search", "grid")


@dataclass
class DemoResult:
    """What the demo measured and wrote.

    Attributes:
        data: How the data is named in the output.
        encoder: The encoder's name.
        report: Precision@1/5/10 and the chance level.
        n_gallery, n_queries: Images encoded on each side (undecodable ones are not counted).
        grid_path: The results grid (PNG).
        index_dir: The index of the gallery, ready for ``clothsim serve --index``.
        failures: ``{"path", "reason"}`` for every skipped file.
        extraction: The gallery's extraction report.
        timings: Seconds per step, keys as in :data:`STEPS` (``encoder`` is loading the model,
            ``search`` ranking the gallery and scoring it).
    """

    data: str
    encoder: str
    report: RetrievalReport
    n_gallery: int
    n_queries: int
    grid_path: Path
    index_dir: Path
    failures: list[dict[str, str]] = field(default_factory=list)
    extraction: ExtractionReport | None = None
    timings: dict[str, float] = field(default_factory=dict)


def split_for_demo(records: Sequence[CatalogRecord], seed: int = 0) -> tuple[list[CatalogRecord], list[CatalogRecord]]:
    """``(gallery, queries)`` by :func:`clothsim.data.query_gallery.choose_protocol`.

    Without a query/gallery pair of splits the records are split per category, 80/20 with ``seed``
    (the demo needs held-out queries; the report falls back to leave-one-out instead).
    """
    query_split, gallery_split = choose_protocol(records)
    if query_split is not None:
        return ([r for r in records if r.split == gallery_split], [r for r in records if r.split == query_split])
    from clothsim.data.splits import balanced_split

    result = balanced_split(list(records), test_fraction=0.2, seed=seed)
    return ([r for r in result.records if r.split == "train"], [r for r in result.records if r.split == "test"])


def load_demo_data(data: str | os.PathLike[str] | None, out_dir: str | Path) -> tuple[list[CatalogRecord], str]:
    """The records the demo runs on, and how to name them.

    Args:
        data: ``None`` for the bundled real-photo sample (:data:`CLOTHING_SAMPLE_DIR`),
            ``"fashion-mnist"`` for the bundled Fashion-MNIST sample (written as PNG files under
            ``out_dir/sample``), or any catalogue :func:`clothsim.data.read_catalog` reads.
        out_dir: The demo's output folder.
    """
    from clothsim.data import read_catalog, read_folder_catalog

    if data is None:
        return read_folder_catalog(CLOTHING_SAMPLE_DIR), "clothing-dataset-small sample (bundled, CC0)"
    # Same rule as read_catalog's names: an existing path of that name wins.
    if str(data).lower() == FASHION_MNIST_NAME and not Path(data).expanduser().exists():
        from clothsim.data.fashion_mnist import materialize_demo_sample

        return materialize_demo_sample(Path(out_dir) / "sample"), "Fashion-MNIST sample (bundled)"
    return read_catalog(data), str(data)


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = time.perf_counter() - start
        logger.debug("demo: %s took %.2f s", step, timings[step])


def run_demo(
    data: str | Path | None = None,
    out_dir: str | Path = "clothsim-demo",
    encoder: str = DEFAULT_ENCODER,
    weights: str | Path | None = None,
    k: int = 5,
    grid_queries: int = 6,
    device: str = "cpu",
    runtime: str = DEFAULT_RUNTIME,
    batch_size: int = 32,
    num_workers: int = 2,
    progress: bool = True,
    seed: int = 0,
) -> DemoResult:
    """Index a gallery, query held-out images against it, measure precision@1/5/10, draw a grid.

    Args:
        data: ``None`` (the bundled clothing photos), ``"fashion-mnist"`` (the bundled Fashion-MNIST
            sample) or a catalogue (folder, CSV, DeepFashion root); see :func:`load_demo_data`. The
            gallery and queries are chosen by :func:`split_for_demo`.
        out_dir: Where the index, the query features and ``results.png`` go (rewritten when run again).
        encoder, weights, device, runtime: Which encoder and what runs it, as for
            :func:`clothsim.create_encoder`.
        k: Results per query in the grid.
        grid_queries: Rows in the grid, spread over categories by
            :func:`clothsim.data.query_gallery.pick_grid_queries`.
        batch_size, num_workers, progress: As for :func:`clothsim.features.extract_features`.
        seed: Seed of the fallback split and of the grid's queries.

    Raises:
        EmptyCatalogError: The data has no gallery or no queries.
    """
    out_dir = Path(out_dir)
    records, data_name = load_demo_data(data, out_dir)
    require_categories(records, "clothsim demo (it measures precision by category)")
    gallery, queries = split_for_demo(records, seed=seed)
    if not gallery or not queries:
        raise EmptyCatalogError(f"{data_name}: the demo needs gallery and query images, got "
                                f"{len(gallery)} and {len(queries)}")
    logger.info("demo: %d gallery images, %d queries", len(gallery), len(queries))

    timings: dict[str, float] = {}
    options = dict(batch_size=batch_size, num_workers=num_workers, progress=progress, overwrite=True)
    with _timed(timings, "encoder"):
        model = create_encoder(encoder, weights=weights, device=device, runtime=runtime)
    with _timed(timings, "index"):
        index, extraction = SimilarityIndex.build(gallery, out_dir / "index", encoder=model, weights=weights,
                                                  **options)
    with _timed(timings, "queries"):
        query_report = extract_features(queries, model, out_dir / "queries", **options)
        query_vectors, query_items = FeatureStore.open(out_dir / "queries").load_vectors()
    with _timed(timings, "search"):
        gallery_vectors, gallery_items = index.store.load_vectors()
        report = evaluate_retrieval(
            query_vectors, [it.record.category for it in query_items],
            gallery_vectors, [it.record.category for it in gallery_items], ks=(1, 5, 10),
        )
    with _timed(timings, "grid"):
        picks = pick_grid_queries([it.record for it in query_items], grid_queries, seed)
        hits = index.backend.search(query_vectors[picks], k)
        grid = save_result_grid(
            [QueryResult(query_items[row].record.path, row_hits, category=query_items[row].record.category)
             for row, row_hits in zip(picks, hits)],
            out_dir / "results.png",
        )
    return DemoResult(data_name, index.encoder.name, report, len(gallery_items), len(query_items), grid,
                      out_dir / "index", extraction.failures + query_report.failures, extraction, timings)

