"""``clothsim evaluate``: compare encoders on a catalogue, in numbers and pictures, in one report folder."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from clothsim.cli.options import add_backend_options_flag, add_data_options, add_extraction_options, positive_int
from clothsim.defaults import (
    DEFAULT_LABEL_PROMPT,
    DEFAULT_DEVICE,
    DEFAULT_EVALUATE_ENCODERS,
    DEFAULT_GRID_QUERIES,
    DEFAULT_INSTANCE_QUERIES,
    DEFAULT_SEED,
    DEFAULT_TSNE_POINTS,
)
from clothsim.name_lists import split_names

if TYPE_CHECKING:
    from clothsim.zero_shot import LabelList


def _count_or_all(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a number of photos or 'all', not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", help="compare encoders on a catalogue (report with numbers and charts)",
        description="Encode a catalogue with each encoder (cached), score the test split against the train "
                    "split (leave-one-out when there are no splits) and write report.md, report.json and a "
                    "self-contained report.html to --out. Encoders whose weights cannot be had are listed "
                    "as skipped with the reason.",
        epilog="example:\n  clothsim evaluate --data ../shared/data/clothing-dataset-small \\\n"
               "      --encoders vgg16,efficientnet_lite0,ensemble:vgg16+efficientnet_lite0 \\\n"
               "      --weights vgg16=vgg16_features_imagenet.pth --out report/ --cache cache/\n"
               "  clothsim evaluate --data DIR --encoders efficientnet_lite0 --backend faiss-hnsw --backend milvus \\\n"
               "      --backend-option faiss-hnsw:efSearch=32 --out report/\n"
               "ensemble:a+b fits that ensemble on the train/validation splits first; ensemble:FOLDER uses one\n"
               "fitted by `clothsim fit-ensemble`. Every encoder's and backend's requirements are checked before\n"
               "anything is encoded.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="catalogue: a folder per category, a CSV file, ...")
    add_data_options(parser)
    parser.add_argument("--encoders", type=split_names, default=list(DEFAULT_EVALUATE_ENCODERS),
                        help=f"comma-separated encoder names (default {','.join(DEFAULT_EVALUATE_ENCODERS)})")
    parser.add_argument("--weights", action="append", metavar="NAME=PATH",
                        help="local weights file for an encoder (repeatable), e.g. vgg16=vgg16.pth")
    parser.add_argument("--out", required=True, help="report folder to write")
    parser.add_argument("--cache", default=None, help="feature store cache (default <out>/stores)")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=f"torch device (default {DEFAULT_DEVICE})")
    add_extraction_options(parser)
    parser.add_argument("--grid-queries", type=positive_int, default=DEFAULT_GRID_QUERIES,
                        help=f"queries in each encoder's result grid (default {DEFAULT_GRID_QUERIES})")
    parser.add_argument("--tsne-points", type=int, default=DEFAULT_TSNE_POINTS,
                        help=f"points in the t-SNE maps, 0 for none (default {DEFAULT_TSNE_POINTS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of the query and point samples (default {DEFAULT_SEED})")
    parser.add_argument("--instance-queries", type=_count_or_all, default=DEFAULT_INSTANCE_QUERIES, metavar="N",
                        help="instance guard: N gallery photos (seeded), altered (crop, colour jitter, JPEG 70), "
                             "must find their original; reports instance R@1. 'all' for every gallery photo, "
                             f"0 to leave it out (default {DEFAULT_INSTANCE_QUERIES})")
    parser.add_argument("--label-with", metavar="LABELS", default=None,
                        help="also score labels from a list: each encoder with a text tower labels the query "
                             "photos with the closest of LABELS (a file with one label per line, labels "
                             "separated by commas, or 'categories' for the catalogue's own) and the share whose "
                             "label is its category is reported")
    parser.add_argument("--label-prompt", default=DEFAULT_LABEL_PROMPT,
                        help=f"how a label becomes a text, {{}} for the label (default {DEFAULT_LABEL_PROMPT!r})")
    from clothsim.plugins import INDEX_BACKENDS, declared_names

    parser.add_argument("--backend", action="append", default=None, choices=declared_names(INDEX_BACKENDS),
                        help="also measure this index backend on each encoder's gallery (repeatable): P@k, "
                             "recall@10 against exact search, build time, time per query")
    add_backend_options_flag(parser, "an option of the backends (repeatable): KEY=VALUE for every --backend, "
                                     "NAME:KEY=VALUE for one, e.g. faiss-hnsw:efSearch=32")
    return parser


def run(args: argparse.Namespace) -> int:
    from clothsim.data import read_catalog
    from clothsim.evaluation import compare_encoders, write_report
    from clothsim.evaluation.backends import split_backend_options
    from clothsim.index.base import parse_option_pairs
    from clothsim.name_lists import parse_name_paths

    part_weights = parse_name_paths(args.weights)  # before the slow part, so a typo fails fast
    backends = list(args.backend or [])
    backend_options = split_backend_options(backends, parse_option_pairs(args.backend_option))
    records = read_catalog(args.data, format=args.format)
    labels = _label_list(args, records)
    comparison = compare_encoders(
        records, args.encoders, args.out, cache=args.cache, part_weights=part_weights,
        data_name=str(args.data), device=args.device, grid_queries=args.grid_queries,
        tsne_points=max(0, args.tsne_points), seed=args.seed, batch_size=args.batch_size,
        num_workers=args.workers, progress=not args.quiet, backends=backends, backend_options=backend_options,
        instance_queries=args.instance_queries, labels=labels)
    paths = write_report(comparison, args.out)
    print(paths["md"].read_text(encoding="utf-8").split("\n\n![")[0])
    print(f"\nreport written to {paths['html']} (also report.md, report.json)")
    return 0 if comparison.results else 1


def _label_list(args: argparse.Namespace, records: list) -> "LabelList | None":
    """``--label-with`` as a label list (the catalogue's category names for ``categories``)."""
    if args.label_with is None:
        return None
    from clothsim.evaluation.labels import CATEGORIES_AS_LABELS
    from clothsim.zero_shot import LabelList, read_label_list

    if args.label_with == CATEGORIES_AS_LABELS:
        names = sorted({r.category for r in records if r.category is not None})
    else:
        names = read_label_list(args.label_with)
    return LabelList(tuple(names), prompt=args.label_prompt)
