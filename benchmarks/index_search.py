"""Exact index search: speed and memory of the chunked, memory-mapped search against a naive full sort.

Builds a feature store of random unit vectors, then times both ways of answering the same queries in one
run and checks that they return the same ids. Memory is numpy's peak allocation during the search
(tracemalloc), which for the naive way includes the gallery loaded into RAM and the full score matrix;
the in-RAM row adds the preloaded gallery's size.

    .venv/bin/python benchmarks/index_search.py --rows 200000 --dim 512 --queries 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from clothsim.data.records import CatalogRecord
from clothsim.encoders.base import l2_normalize
from clothsim.features.store import FeatureStore
from clothsim.index.exact import ExactIndex


def build_store(root: Path, rows: int, dim: int, dtype: str, seed: int) -> None:
    store = FeatureStore.create(root, {"encoder": "bench", "weights": "random", "dim": dim, "preprocessing": None},
                                dtype=dtype)
    rng = np.random.default_rng(seed)
    for start in range(0, rows, 50_000):
        n = min(50_000, rows - start)
        store.append(l2_normalize(rng.normal(size=(n, dim))),
                     [CatalogRecord(f"{start + i}.jpg", f"c{(start + i) % 10}") for i in range(n)])


def measure(fn):
    tracemalloc.start()
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--chunk-rows", type=int, default=16384)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        build_store(root, args.rows, args.dim, args.dtype, seed=0)
        queries = l2_normalize(np.random.default_rng(1).normal(size=(args.queries, args.dim)))

        store = FeatureStore.open(root)
        index = ExactIndex(store, chunk_rows=args.chunk_rows)
        index.search(queries[:1], args.k)  # warm the metadata cache, as a server does at start-up
        hits, t_index, m_index = measure(lambda: index.search(queries, args.k))

        def naive():
            gallery, _ = FeatureStore.open(root).load_vectors()
            scores = queries @ gallery.T
            return np.argsort(-scores, axis=1, kind="stable")[:, : args.k]

        ref, t_naive, m_naive = measure(naive)
        same = all([h.id for h in row] == list(r) for row, r in zip(hits, ref))

        # The best case for in-RAM search: gallery already loaded, one matrix product, a partial sort.
        preloaded, _ = FeatureStore.open(root).load_vectors()

        def in_ram():
            scores = queries @ preloaded.T
            return np.argpartition(-scores, args.k, axis=1)[:, : args.k]

        _, t_ram, m_ram = measure(in_ram)

    print(f"gallery {args.rows} x {args.dim} ({args.dtype}), {args.queries} queries, k={args.k}, "
          f"chunk {args.chunk_rows} rows")
    print(f"{'':<28}{'ms/query':>10}{'peak MiB':>10}")
    print(f"{'exact index (chunked mmap)':<28}{1000 * t_index / args.queries:>10.2f}{m_index / 2**20:>10.1f}")
    print(f"{'naive (load all, full sort)':<28}{1000 * t_naive / args.queries:>10.2f}{m_naive / 2**20:>10.1f}")
    print(f"{'in RAM (preloaded, argpart.)':<28}{1000 * t_ram / args.queries:>10.2f}"
          f"{(m_ram + preloaded.nbytes) / 2**20:>10.1f}")
    print(f"against naive: speed-up x{t_naive / t_index:.1f}, memory x{m_naive / max(m_index, 1):.1f} less; same ids: {same}")


if __name__ == "__main__":
    main()
