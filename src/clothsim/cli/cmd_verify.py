"""``clothsim verify``: check an index folder's files against the checksums its manifest records."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "verify", help="check an index for damage (sizes, headers, checksums)",
        description="Read every file of an index folder and compare it with the size and SHA-256 its manifest "
                    "records (format-1 indexes, which have no checksums, get every vector's norm checked), "
                    "then the files of every index backend saved in it (a FAISS file against its checksum, "
                    "a Milvus collection against the store's row count). Exit status 0 when it is intact, 1 when something is damaged or unfinished.",
        epilog="examples:\n  clothsim verify catalog/\n  clothsim verify catalog/ --quick      # sizes and headers only\n"
               "  clothsim verify catalog/ --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", help="index folder made by `clothsim index`")
    parser.add_argument("--quick", action="store_true", help="check sizes and headers only, not checksums")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    from clothsim.features.model_files import model_file_problem
    from clothsim.features.store import FeatureStore, repair_hint
    from clothsim.index.registry import check_backends

    store = FeatureStore.open(args.index, allow_unfinished=True, verify=False, check_files=False)
    report = store.verify(full=not args.quick)
    pending = store.sync_pending
    unfinished = bool(pending)
    # Backend files are only meaningful over an intact store: checking them over a damaged one would
    # report the same damage twice, under another name.
    backends = check_backends(store, full=not args.quick) if report.ok else []
    backend_problems = sum(len(check.problems) for check in backends)
    model_problem = model_file_problem(store, full=not args.quick)
    ok = report.ok and not unfinished and not backend_problems and model_problem is None
    if args.json:
        print(json.dumps({
            "index": str(store.root), "ok": ok, "format_version": report.format_version,
            "segments": report.segments, "rows": report.rows, "live": report.live,
            "bytes_checked": report.bytes_checked, "checksums": report.checksums and not args.quick,
            "unfinished": unfinished, "problems": [{"path": str(p.path), "problem": p.message, "kind": p.kind}
                                                   for p in report.problems],
            "leftovers": [str(p) for p in report.leftovers], "seconds": round(report.seconds, 3),
            "model_file": model_problem or "ok",
            "backends": [{"backend": c.name, "folder": str(c.folder), "checked": c.checked, "ok": c.ok,
                          "problems": c.problems, "note": c.note} for c in backends]}, indent=2))
        return 0 if ok else 1
    what = "sizes and headers" if args.quick else ("checksums" if report.checksums else
                                                   "vector norms (format 1 has no checksums)")
    print(f"{store.root}: format {report.format_version}, {report.segments} segment(s), {report.rows} rows "
          f"({report.live} live); {what} of {report.bytes_checked / 2**20:.1f} MiB checked in {report.seconds:.2f} s")
    for problem in report.problems:
        print(f"DAMAGED {problem.path}: {problem.message}")
    for path in report.leftovers:
        print(f"leftover {path} (harmless; the next `clothsim index` removes it)")
    for check in backends:
        if check.problems:
            for problem in check.problems:
                print(f"DAMAGED backend {check.name}: {problem}")
        elif check.checked:
            print(f"backend {check.name}: ok ({'records and sizes' if args.quick else 'checksums and contents'} checked)")
        else:
            print(f"backend {check.name}: {check.note}")
    if model_problem is not None:
        print(f"DAMAGED {model_problem}; `clothsim index CATALOGUE --out {store.root}` (as it was built) "
              "puts it back")
    if unfinished:
        kind = "first build" if pending.get("first_build") else "update"
        print(f"UNFINISHED: a `clothsim index` {kind} was interrupted; run the same command again to finish it")
    if report.problems:
        print(f"{len(report.problems)} problem(s). {repair_hint(store.root)}")
        return 1
    if unfinished or backend_problems or model_problem is not None:
        return 1
    print("ok")
    return 0
