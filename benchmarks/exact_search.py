"""Exact search at the memory wall: clothsim's exact index on float32 and float16 stores, against the
limits of this machine measured in the same run.

For each dtype it builds (or reuses, with ``--data``) a store of ``--rows`` unit vectors of ``--dim``
dimensions in 50 categories, then measures through clothsim's own API:

* opening the store and the first query (metadata loaded on first use), then single queries (median);
* the memory wall: the store's bytes over the read bandwidth of this machine, measured by streaming the
  same memory-mapped bytes (the best of one and two threads), and single-query time against it;
* a batch of queries against the sgemm limit: the same products done by the fastest BLAS available on
  the same vectors already in RAM as float32, with no top-k at all;
* a query with a category filter (1 of 50), ``categories()``, and the memory the process holds beyond
  the memory-mapped vectors while searching.

    .venv/bin/python benchmarks/exact_search.py --rows 1000000 --dim 1280 --data /tmp/clothsim-1m

The stores are kept in ``--data`` for a second run; delete the folder afterwards (about 7.5 GB at 1M x 1280).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from clothsim.data.records import CatalogRecord
from clothsim.features.store import FeatureStore
from clothsim.index.exact import ExactIndex

CHUNK = 65536
CATEGORIES = 50


def anon_bytes() -> int:
    """Anonymous resident memory of this process (what it holds beyond mapped files)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    """Samples anonymous memory every few milliseconds while a block runs."""

    def __enter__(self) -> "PeakSampler":
        self.base = anon_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.003):
            self.peak = max(self.peak, anon_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_bytes())


def build(root: Path, rows: int, dim: int, dtype: str, seed: int) -> None:
    fp = {"encoder": "bench", "weights": "random", "dim": dim, "preprocessing": None}
    store = FeatureStore.create(root, fp, dtype=dtype)
    rng = np.random.default_rng(seed)
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        block = rng.standard_normal((n, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        records = [CatalogRecord(f"/catalogue/{start + i:08d}.jpg", f"category-{(start + i) % CATEGORIES:02d}")
                   for i in range(n)]
        store.append(block, records, sources=[None] * n)
    store.commit(source_hash="bench", n_source_records=rows)


def read_bandwidth(store: FeatureStore) -> float:
    """Bytes per second of streaming the store's memory-mapped vectors (best of 1 and 2 threads)."""
    arrays = [array for _, array, _ in store.iter_segments()]
    total = sum(a.nbytes for a in arrays)

    def stream(parts):
        for array in parts:
            flat = array.reshape(-1).view(np.uint64) if array.nbytes % 8 == 0 else array.reshape(-1).view(np.uint8)
            for lo in range(0, flat.size, 1 << 20):
                np.bitwise_or.reduce(flat[lo : lo + (1 << 20)])

    best = float("inf")
    for threads in (1, 2, 1, 2):
        started = time.perf_counter()
        if threads == 1:
            stream(arrays)
        else:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(stream, [arrays[0::2], arrays[1::2]]))
        best = min(best, time.perf_counter() - started)
    return total / best


def sgemm_limit(store: FeatureStore, queries: np.ndarray) -> tuple[float, str, float]:
    """Seconds for queries x vectors^T by the fastest BLAS here (numpy's or torch's), vectors already in
    RAM as float32; and one query's matrix-vector product the same way."""
    import torch

    gallery = np.concatenate([np.asarray(a, dtype=np.float32) for _, a, _ in store.iter_segments()])
    results = {}
    for name in ("numpy", "torch"):
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            for lo in range(0, gallery.shape[0], CHUNK):
                if name == "numpy":
                    queries @ gallery[lo : lo + CHUNK].T
                else:
                    torch.mm(torch.from_numpy(queries), torch.from_numpy(gallery[lo : lo + CHUNK]).T)
            best = min(best, time.perf_counter() - started)
        results[name] = best
    name = min(results, key=results.get)
    one = float("inf")
    for _ in range(3):  # the in-RAM single query, the floor to compare with
        started = time.perf_counter()
        gallery @ queries[0]
        one = min(one, time.perf_counter() - started)
    del gallery
    return results[name], name, one


def measure(root: Path, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(7)
    singles = rng.standard_normal((args.single, args.dim), dtype=np.float32)
    singles /= np.linalg.norm(singles, axis=1, keepdims=True)
    batch = rng.standard_normal((args.batch, args.dim), dtype=np.float32)
    batch /= np.linalg.norm(batch, axis=1, keepdims=True)

    started = time.perf_counter()
    store = FeatureStore.open(root)
    index = ExactIndex(store)
    opened = time.perf_counter() - started
    first = index.search(singles[:1], k=10)[0]
    open_and_first = time.perf_counter() - started
    assert len(first) == 10

    bandwidth = read_bandwidth(store)
    nbytes = sum(a.nbytes for _, a, _ in store.iter_segments())
    wall = nbytes / bandwidth
    with PeakSampler() as memory:
        times = []
        for q in singles[1:]:
            t = time.perf_counter()
            index.search(q[None, :], k=10)
            times.append(time.perf_counter() - t)
        single = statistics.median(times)
        t = time.perf_counter()
        hits = index.search(batch, k=10)
        batched = time.perf_counter() - t
        filtered = []
        for q in singles[1:6]:
            t = time.perf_counter()
            index.search(q[None, :], k=10, category="category-07")
            filtered.append(time.perf_counter() - t)
    t = time.perf_counter()
    counts = index.categories()
    categories_s = time.perf_counter() - t
    assert len(counts) == CATEGORIES and all(len(h) == 10 for h in hits)

    limit, blas, in_ram_one = sgemm_limit(store, batch)
    return {
        "dtype": store.dtype, "rows": store.total_rows, "dim": store.dim, "store_gib": nbytes / 2**30,
        "open_s": opened, "open_and_first_query_s": open_and_first, "single_query_s": single,
        "read_gb_per_s": bandwidth / 1e9, "memory_wall_s": wall, "single_vs_wall": single / wall,
        "batch": args.batch, "batch_s": batched, "batch_queries_per_s": args.batch / batched,
        "sgemm_limit_s": limit, "sgemm_blas": blas, "batch_fraction_of_sgemm": limit / batched,
        "numpy_in_ram_single_query_s": in_ram_one, "filtered_query_s": statistics.median(filtered),
        "categories_s": categories_s, "search_anon_peak_mib": (memory.peak - memory.base) / 2**20,
    }


FIRST_QUERY = """
import sys, time
import numpy as np
import torch  # as in any clothsim process that encodes its queries
from clothsim.features.store import FeatureStore
from clothsim.index.exact import ExactIndex
started = time.perf_counter()
index = ExactIndex(FeatureStore.open(sys.argv[1]))
query = np.random.default_rng(5).standard_normal((1, index.store.dim), dtype=np.float32)
hits = index.search(query / np.linalg.norm(query), k=10)[0]
print(time.perf_counter() - started, len(hits))
"""


def first_query(root: Path) -> float:
    """Opening plus the first query in a fresh process, the store's files in the page cache."""
    import subprocess
    import sys

    for path in sorted((root / "segments").iterdir()):  # read once: measure the index, not the disk
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass
    out = subprocess.run([sys.executable, "-c", FIRST_QUERY, str(root)], capture_output=True, text=True, check=True)
    seconds, n = out.stdout.split()
    assert int(n) == 10
    return float(seconds)


def check_same_ids(root: Path, dim: int) -> bool:
    """The index's top-10 equals a full float64 ranking of the stored vectors for a few queries."""
    store = FeatureStore.open(root)
    index = ExactIndex(store)
    rng = np.random.default_rng(11)
    queries = rng.standard_normal((3, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery_scores = []
    for _, array, _ in store.iter_segments():
        gallery_scores.append(np.asarray(array, dtype=np.float32) @ queries.T)
    scores = np.concatenate(gallery_scores)
    want = np.argsort(-scores, axis=0, kind="stable")[:10].T
    got = [[h.id for h in row] for row in index.search(queries, k=10)]
    got_single = [[h.id for h in index.search(q[None, :], k=10)[0]] for q in queries]
    return got == want.tolist() and got_single == want.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--single", type=int, default=21, help="single queries timed (the first is the cold one)")
    parser.add_argument("--batch", type=int, default=256, help="queries in the batched measurement")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    parser.add_argument("--data", type=Path, required=True, help="folder for the stores (reused when present)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--first-query-only", action="store_true",
                        help="only time opening plus the first query (fresh process, files in the page cache)")
    args = parser.parse_args()
    if args.first_query_only:
        for dtype in args.dtypes:
            root = args.data / f"{dtype}-{args.rows}x{args.dim}"
            print(f"{dtype}: open + first query {first_query(root):.3f} s (fresh process, warm page cache)")
        return

    results = []
    for dtype in args.dtypes:
        root = args.data / f"{dtype}-{args.rows}x{args.dim}"
        if not FeatureStore.exists(root):
            started = time.perf_counter()
            build(root, args.rows, args.dim, dtype, seed=0)
            print(f"built {root} in {time.perf_counter() - started:.0f} s", flush=True)
        result = measure(root, args)
        result["open_and_first_query_fresh_process_s"] = first_query(root)
        result["same_ids_as_full_ranking"] = check_same_ids(root, args.dim)
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"\n{args.rows} x {args.dim}, k=10, {args.batch} queries per batch")
    rows = [
        ("store size (GiB)", "store_gib", "{:.2f}"),
        ("open the store (s)", "open_s", "{:.3f}"),
        ("open + first query, this process (s)", "open_and_first_query_s", "{:.3f}"),
        ("open + first query, fresh process, warm page cache (s)", "open_and_first_query_fresh_process_s", "{:.3f}"),
        ("single query, median (s)", "single_query_s", "{:.3f}"),
        ("read bandwidth (GB/s)", "read_gb_per_s", "{:.1f}"),
        ("memory wall: bytes / bandwidth (s)", "memory_wall_s", "{:.3f}"),
        ("single query / memory wall", "single_vs_wall", "{:.2f}x"),
        ("numpy in RAM, one query (s)", "numpy_in_ram_single_query_s", "{:.3f}"),
        ("batch of queries (s)", "batch_s", "{:.2f}"),
        ("batched queries/s", "batch_queries_per_s", "{:.0f}"),
        ("sgemm limit, vectors in RAM (s)", "sgemm_limit_s", "{:.2f}"),
        ("batched / sgemm limit", "batch_fraction_of_sgemm", "{:.0%}"),
        ("query with a category filter (1 of 50) (s)", "filtered_query_s", "{:.3f}"),
        ("categories() (s)", "categories_s", "{:.3f}"),
        ("memory beyond the mapped vectors while searching (MiB)", "search_anon_peak_mib", "{:.0f}"),
        ("same ids as a full ranking", "same_ids_as_full_ranking", "{}"),
    ]
    print(f"| | {' | '.join(r['dtype'] + ' store' for r in results)} |")
    print("|---|" + "---|" * len(results))
    for label, key, fmt in rows:
        print(f"| {label} | {' | '.join(fmt.format(r[key]) for r in results)} |")


if __name__ == "__main__":
    main()
