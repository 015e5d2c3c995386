"""``clothsim duplicates``: near-duplicate groups of an index, a threshold calibrated from data, or new
photos checked against the catalogue."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clothsim.defaults import (
    DEFAULT_CALIBRATION_SAMPLE,
    DEFAULT_DUPLICATE_NEIGHBOURS,
    DEFAULT_DUPLICATE_THRESHOLD,
    DEFAULT_SEED,
)
from clothsim.cli.options import positive_int


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a cosine in (0, 1], got {text}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "duplicates", help="find near-duplicate groups in an index, calibrate the threshold, check new photos",
        description="Group the near-duplicates of a whole index: byte-identical files first, then items whose "
                    "cosine is at least the threshold among each item's nearest neighbours (found by the index's "
                    "own backend), grouped so that every two members of a group are alike (no chaining). The "
                    "groups are kept in the index for `clothsim search --collapse`. With photos, says whether "
                    "each already has copies in the index. --calibrate measures precision and recall on "
                    "altered copies of the index's own photos and records the threshold it recommends.",
        epilog="examples:\n  clothsim duplicates --index catalog/ --calibrate\n"
               "  clothsim duplicates --index catalog/ --out dupes/       # groups.csv and index.html\n"
               "  clothsim duplicates --index catalog/ --json\n"
               "  clothsim duplicates --index catalog/ new-photo.jpg",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="*", help="photos to check against the index (instead of grouping it)")
    parser.add_argument("--index", required=True, help="index folder made by `clothsim index`")
    parser.add_argument("--threshold", type=_threshold, default=None,
                        help="least cosine of two near-duplicates (default: the one calibrated on the index, "
                             f"else {DEFAULT_DUPLICATE_THRESHOLD:.2f})")
    parser.add_argument("--neighbours", type=positive_int, default=DEFAULT_DUPLICATE_NEIGHBOURS,
                        help=f"nearest items looked at per item (default {DEFAULT_DUPLICATE_NEIGHBOURS})")
    parser.add_argument("--calibrate", action="store_true",
                        help="measure precision and recall per threshold on altered copies of the index's "
                             "photos, and record the recommended threshold with the index")
    parser.add_argument("--sample", type=positive_int, default=DEFAULT_CALIBRATION_SAMPLE,
                        help=f"with --calibrate: photos of the index to alter (default {DEFAULT_CALIBRATION_SAMPLE})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"with --calibrate: seed of the sample (default {DEFAULT_SEED})")
    parser.add_argument("--out", metavar="DIR", help="also write groups.csv and an HTML contact sheet here")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-save", action="store_true", help="do not keep the groups in the index")
    return parser


def run(args: argparse.Namespace) -> int:
    from clothsim.cli.cmd_search import check_query_files

    check_query_files(args.photos)
    if not Path(args.index).is_dir():
        raise FileNotFoundError(f"index folder {args.index} does not exist")
    from clothsim.similarity_index import SimilarityIndex

    index = SimilarityIndex.open(args.index)
    if args.calibrate:
        return _calibrate(index, args)
    if args.photos:
        return _check(index, args)
    from clothsim.duplicates.finder import find_duplicates

    report = find_duplicates(index, args.threshold, args.neighbours, progress=not args.quiet, save=not args.no_save)
    if args.out:
        from clothsim.duplicates.report import write_report

        write_report(report, args.out)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    in_groups = sum(len(g) for g in report.groups)
    print(f"{len(report.groups)} groups of near-duplicates ({in_groups} of {report.n_items} items) at cosine >= "
          f"{report.threshold:.3f} ({report.threshold_source}); {report.n_pairs} candidate pairs, "
          f"{report.refused_merges} merges refused by the chaining guard, {report.exact_copies} items are "
          f"identical files; {report.note}; {report.seconds:.1f} s")
    for number, group in enumerate(report.groups[:10], start=1):
        print(f"group {number}: {len(group)} items, representative {group.representative} "
              f"({report.paths.get(group.representative)})")
        for item, score in list(zip(group.members, group.scores))[1:6]:
            print(f"    {score:.3f}  {item}  {report.paths.get(item)}")
    if len(report.groups) > 10:
        print(f"... {len(report.groups) - 10} more groups (--json or --out DIR for all)")
    if args.out:
        print(f"report written to {args.out}/ (groups.csv, index.html)")
    return 0


def _calibrate(index, args: argparse.Namespace) -> int:
    from clothsim.duplicates.calibration import TARGET_PRECISION, calibrate, record_calibration

    result = calibrate(index, args.sample, args.seed, progress=not args.quiet)
    record_calibration(index, result)
    if args.json:
        print(json.dumps({"recommended": result.recommended, "reason": result.reason,
                          "originals": result.n_originals, "copies": result.n_copies,
                          "rows": [{"threshold": r.threshold, "recall": round(r.recall, 4),
                                    "precision": round(r.precision, 4), "false_alarms": r.false_alarms,
                                    "recall_by_kind": {k: round(v, 4) for k, v in r.recall_by_kind.items()}}
                                   for r in result.rows]}, indent=2))
        return 0
    kinds = list(result.rows[0].recall_by_kind)
    print(f"{result.n_copies} altered copies of {result.n_originals} photos of {args.index} (seed {result.seed})")
    print(f"{'threshold':>9} {'recall':>7} {'precision':>9} {'alarms':>7}  " + " ".join(f"{k:>10}" for k in kinds))
    for row in result.rows:
        if row.threshold < 0.80:
            continue
        mark = "  <- recommended" if abs(row.threshold - result.recommended) < 1e-9 else ""
        print(f"{row.threshold:>9.2f} {row.recall:>7.3f} {row.precision:>9.3f} {row.false_alarms:>7}  "
              + " ".join(f"{row.recall_by_kind[k]:>10.3f}" for k in kinds) + mark)
    print(f"recorded threshold {result.recommended:.2f} with the index: {result.reason} "
          f"(target precision {TARGET_PRECISION})")
    return 0


def _check(index, args: argparse.Namespace) -> int:
    from clothsim.duplicates.collapse import check_photos

    checks = check_photos(index, args.photos, args.threshold)
    if args.json:
        print(json.dumps([{"photo": c.photo, "threshold": c.threshold,
                           "copies": [h.to_dict() for h in c.copies]} for c in checks], indent=2))
        return 0
    for check in checks:
        if check.copies:
            print(f"{check.photo}: {len(check.copies)} near-duplicate(s) in the index")
            for hit in check.copies:
                print(f"    {hit.score:.3f}  {hit.id}  {hit.record.path}")
        else:
            print(f"{check.photo}: no near-duplicate in the index (cosine < {check.threshold:.3f})")
    return 0
