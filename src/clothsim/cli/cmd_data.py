"""``clothsim data``: look at a catalogue before indexing it: counts, filters, splits, a chart."""

from __future__ import annotations

import argparse

from clothsim.defaults import DEFAULT_SEED
from clothsim.cli.options import add_data_options


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "data", help="summarise a catalogue, filter it, split it, plot its categories",
        description="Read a catalogue, print images per category and split, optionally keep only "
                    "categories with --min-count images, make a per-category balanced split and save "
                    "the category distribution chart.",
        epilog="examples:\n  clothsim data ../shared/data/clothing-dataset-small --plot dist.png\n"
               "  clothsim data DeepFashion/ --min-count 100 --split 0.2 --write-csv catalog.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="catalogue: a folder per category, a CSV file, or a DeepFashion root")
    add_data_options(parser)
    parser.add_argument("--min-count", type=int, default=0, help="drop categories with fewer images")
    parser.add_argument("--split", type=float, default=None, metavar="TEST_FRACTION",
                        help="re-split every category into train/test with this test fraction (e.g. 0.2)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the split (default {DEFAULT_SEED})")
    parser.add_argument("--plot", metavar="PNG", help="save the category distribution chart")
    parser.add_argument("--write-csv", metavar="CSV", help="save the (filtered, split) catalogue as CSV")
    return parser


#: How the images without a category are shown.
NO_CATEGORY = "(no category)"


def run(args: argparse.Namespace) -> int:
    from clothsim.data import (balanced_split, category_counts, filter_min_count, plot_category_distribution,
                               read_catalog, write_csv_catalog)

    records = read_catalog(args.data, format=args.format)
    counts = category_counts(records)
    unlabelled = counts.pop(None, 0)
    print(f"{args.data}: {len(records)} images in {len(counts)} categories"
          + (f", {unlabelled} without a category" if unlabelled else ""))
    if args.min_count:
        filtered = filter_min_count(records, args.min_count)
        records = filtered.records
        for category, count in sorted(filtered.dropped.items()):
            print(f"dropped {category!r}: {count} images < {args.min_count}")
    if args.split is not None:
        result = balanced_split(records, test_fraction=args.split, seed=args.seed)
        records = result.records
        for category, count in sorted(result.unsplittable.items()):
            print(f"cannot split {category!r} ({count} image): kept in train only")
    splits = sorted({r.split or "-" for r in records})
    table: dict[str, dict[str, int]] = {}
    for record in records:
        row = table.setdefault(record.category or NO_CATEGORY, {})
        row[record.split or "-"] = row.get(record.split or "-", 0) + 1
    print(f"{'category':<24}" + "".join(f"{s:>12}" for s in splits) + f"{'total':>10}")
    for category in sorted(table):
        row = table[category]
        print(f"{category:<24}" + "".join(f"{row.get(s, 0):>12}" for s in splits) + f"{sum(row.values()):>10}")
    if args.plot:
        plot_category_distribution(records, args.plot)
        print(f"chart written to {args.plot}")
    if args.write_csv:
        write_csv_catalog(records, args.write_csv)
        print(f"catalogue written to {args.write_csv}")
    return 0
