"""``clothsim verify``: check an index folder's files against the checksums its manifest records."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "verify", help="check an index for damage (sizes, headers, checksums)",
        description="Read every file of an index folder and compare it with the size and SHA-256 its manifest "
                    "records (format-1 indexes, which have no checksums, get every vector's norm checked). "
                    "Exit status 0 when it is intact, 1 when something is damaged or unfinished.",
        epilog="examples:\n  clothsim verify catalog/\n  clothsim verify catalog/ --quick      # sizes and headers only\n"
               "  clothsim verify catalog/ --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", help="index folder made by `clothsim index`")
    parser.add_argument("--quick", action="store_true", help="check sizes and headers only, not checksums")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    from clothsim.features.store import FeatureStore, repair_hint

    store = FeatureStore.open(args.index, allow_unfinished=True, verify=False, check_files=False)
    report = store.verify(full=not args.quick)
    pending = store.sync_pending
    unfinished = bool(pending)
    if args.json:
        print(json.dumps({
            "index": str(store.root), "ok": report.ok and not unfinished, "format_version": report.format_version,
            "segments": report.segments, "rows": report.rows, "live": report.live,
            "bytes_checked": report.bytes_checked, "checksums": report.checksums and not args.quick,
            "unfinished": unfinished, "problems": [{"path": str(p.path), "problem": p.message, "kind": p.kind}
                                                   for p in report.problems],
            "leftovers": [str(p) for p in report.leftovers], "seconds": round(report.seconds, 3)}, indent=2))
        return 0 if report.ok and not unfinished else 1
    what = "sizes and headers" if args.quick else ("checksums" if report.checksums else
                                                   "vector norms (format 1 has no checksums)")
    print(f"{store.root}: format {report.format_version}, {report.segments} segment(s), {report.rows} rows "
          f"({report.live} live); {what} of {report.bytes_checked / 2**20:.1f} MiB checked in {report.seconds:.2f} s")
    for problem in report.problems:
        print(f"DAMAGED {problem.path}: {problem.message}")
    for path in report.leftovers:
        print(f"leftover {path} (harmless; the next `clothsim index` removes it)")
    if unfinished:
        kind = "first build" if pending.get("first_build") else "update"
        print(f"UNFINISHED: a `clothsim index` {kind} was interrupted; run the same command again to finish it")
    if report.problems:
        print(f"{len(report.problems)} problem(s). {repair_hint(store.root)}")
        return 1
    if unfinished:
        return 1
    print("ok")
    return 0
