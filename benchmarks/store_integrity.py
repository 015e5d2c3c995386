"""What keeping damage from being served costs on a store too big to hash at every open (default 1M x 1280).

Measures, on a float32 store written through clothsim's own API (kept in ``--data`` and reused):

* ``open_s``: opening it (sizes, headers, and the row checksums' own SHA-256: 8 bytes a row);
* ``check_hits_ms``: :meth:`FeatureStore.check_rows` on a search's 10 hits (each row hashed against its
  checksum), median of ``--repeats`` random draws, and per row;
* ``exact_query_ms``: one exact query (which includes that check), for scale;
* ``background_check_s``: :meth:`FeatureStore.verify_in_background` to the end (every file's SHA-256 on
  2 threads), the full check ``clothsim serve`` can run while it serves;
* ``row_checksums_rows_per_s``: computing row checksums when writing (XXH3-64 a row);
* ``file_check_gb_per_s``: the fast checksum backends' files are checked with before serving (XXH3-128),
  over the vectors file as a stand-in for a graph of the same size::

    .venv/bin/python benchmarks/store_integrity.py --rows 1000000 --dim 1280 --data /tmp/clothsim-integrity-1m
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from clothsim.data.records import CatalogRecord
from clothsim.features.row_checksums import row_checksums
from clothsim.features.store import FeatureStore
from clothsim.fileio import file_checksum
from clothsim.index.exact import ExactIndex

BLOCK = 100_000


def build(root: Path, rows: int, dim: int, seed: int = 0) -> None:
    store = FeatureStore.create(root, {"encoder": "integrity-bench", "weights": "none", "dim": dim,
                                       "preprocessing": None})
    rng = np.random.default_rng(seed)
    for lo in range(0, rows, BLOCK):
        n = min(BLOCK, rows - lo)
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        store.append(x, [CatalogRecord(f"/catalogue/{i}.jpg", f"c{i % 50}") for i in range(lo, lo + n)],
                     sources=[(1000, 1)] * n)
        print(f"  wrote {lo + n} rows", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--data", type=Path, default=Path("/tmp/clothsim-integrity-1m"))
    parser.add_argument("--repeats", type=int, default=1000)
    args = parser.parse_args()

    if not FeatureStore.exists(args.data):
        print(f"writing {args.rows} x {args.dim} into {args.data}", flush=True)
        build(args.data, args.rows, args.dim)

    started = time.perf_counter()
    store = FeatureStore.open(args.data)
    open_s = time.perf_counter() - started
    assert store.total_rows == args.rows, "the store at --data has another size"

    rng = np.random.default_rng(1)
    ids = store.all_ids()
    draws = [np.sort(rng.choice(ids, 10, replace=False)) for _ in range(args.repeats)]
    store.check_rows(draws[0])  # first touch of the pages: not what a warm server pays
    times = []
    for hits in draws:
        t = time.perf_counter()
        store.check_rows(hits)
        times.append(time.perf_counter() - t)
    check_ms = statistics.median(times) * 1e3

    index = ExactIndex(store)
    query = store.vector(int(ids[12345]))[None, :]
    index.search(query, 10)
    query_times = []
    for _ in range(5):
        t = time.perf_counter()
        index.search(query, 10)
        query_times.append(time.perf_counter() - t)

    t = time.perf_counter()
    check = store.verify_in_background()
    report = check.wait()
    background_s = time.perf_counter() - t

    sample = np.asarray(store.vectors_for(ids[:100_000]), dtype=np.float32)
    t = time.perf_counter()
    row_checksums(sample)
    rowsum_rate = sample.shape[0] / (time.perf_counter() - t)

    path = store.segments[0].vectors_path
    t = time.perf_counter()
    size, _ = file_checksum(path)
    file_rate = size / (time.perf_counter() - t) / 1e9

    print(json.dumps({
        "rows": args.rows, "dim": args.dim, "store_gib": round(store._data_bytes() / 2**30, 2),
        "open_s": round(open_s, 3),
        "check_hits_ms": round(check_ms, 4), "check_per_row_us": round(check_ms * 1e3 / 10, 2),
        "exact_query_ms": round(statistics.median(query_times) * 1e3, 1),
        "background_check_s": round(background_s, 1), "background_check_ok": bool(report and report.ok),
        "background_check_gib": round((report.bytes_checked if report else 0) / 2**30, 2),
        "row_checksums_rows_per_s": round(rowsum_rate),
        "file_check_gb_per_s": round(file_rate, 2),
    }, indent=1))


if __name__ == "__main__":
    main()
