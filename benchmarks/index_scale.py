"""Index backends at catalogue scale: build time, disk, memory, latency, throughput and recall@10 against
exact search, on clustered vectors (not uniform noise, on which approximate search means nothing).

The data is a seeded Gaussian mixture shaped like image features: ``--clusters`` centres, each cluster
spread along a few directions of its own (a low intrinsic dimension) plus a little isotropic noise,
L2-normalised; category = cluster modulo ``--categories``. It is written once into a feature store
through clothsim's own API; each backend is then built, and searched, in a fresh child process (so
RSS, the open time and the first query are that backend's alone)::

    .venv/bin/python benchmarks/index_scale.py --rows 100000 --dim 1280
    .venv/bin/python benchmarks/index_scale.py --rows 1000000 --dim 1280 --json \\
        --max-rows faiss-hnsw=300000 --max-rows milvus=200000

``--max-rows NAME=N`` measures a backend on the first N rows only (a build that would not finish in
reasonable time on this machine); its row is marked with the size it was measured at. Recall is always
against exact search over the same rows. Filtered queries ask for one random category (1 of
``--categories``), the harder case: its nearest items usually lie outside the query's cluster. "Own"
filtered queries ask for the query's own category ("more like this, in the same category"). Each
backend is warmed as `clothsim serve` warms it (``warm_s``) before the timed queries; the three kinds of
query are interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 10


# ----- data ----------------------------------------------------------------------------------------
class Mixture:
    """The seeded clustered distribution; points are generated chunk by chunk (bounded memory).

    A cluster centre is ``shared * g + category_weight * S[category] + own * u[cluster]`` (unit
    directions, normalised): a component every item has (pooled ReLU features are all positive, so
    two unrelated garments still have cosine ~0.2-0.4), one per category (a dress is closer to a
    dress than to a shoe) and one per cluster. ``shared = category_weight = 0`` gives clusters with
    nothing in common (cosine ~0 between any two), a harder case than image features. Within a
    cluster, items vary along ``rank`` directions of its own with standard deviation ``spread`` each.
    """

    def __init__(self, dim: int, clusters: int, seed: int, rank: int = 16, categories: int = 50,
                 shared: float = 0.55, category_weight: float = 0.45, spread: float = 0.2) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.clusters, self.seed, self.rank, self.spread = dim, clusters, seed, rank, spread
        self.categories = categories

        def unit(n: int) -> np.ndarray:
            v = rng.normal(size=(n, dim)).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        own = unit(clusters)
        common, per_category = unit(1), unit(categories)
        own_weight = np.sqrt(max(1e-6, 1.0 - shared ** 2 - category_weight ** 2))
        centres = shared * common + category_weight * per_category[np.arange(clusters) % categories] + own_weight * own
        self.centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
        self.bases = (rng.normal(size=(clusters, rank, dim)) / np.sqrt(dim)).astype(np.float32)

    def points(self, start: int, n: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, stream, start])
        cluster = rng.integers(self.clusters, size=n)
        z = rng.normal(size=(n, self.rank)).astype(np.float32)
        x = self.centres[cluster] + self.spread * np.einsum("nr,nrd->nd", z, self.bases[cluster])
        x += rng.normal(size=(n, self.dim)).astype(np.float32) * (0.05 / np.sqrt(self.dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32), cluster


def build_store(root: Path, rows: int, mix: Mixture, categories: int, dtype: str, chunk: int = 50_000) -> float:
    from clothsim.data.records import CatalogRecord
    from clothsim.features.store import FeatureStore

    started = time.perf_counter()
    store = FeatureStore.create(root, {"encoder": "bench-mixture", "weights": f"seed{mix.seed}", "dim": mix.dim,
                                       "preprocessing": None}, dtype=dtype)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        x, cluster = mix.points(start, n)
        store.append(x, [CatalogRecord(f"item/{start + i}.jpg", f"c{int(c) % mix.categories:02d}")
                         for i, c in enumerate(cluster)])
        print(f"  store: {start + n:,} / {rows:,} rows", file=sys.stderr, flush=True)
    return time.perf_counter() - started


def ground_truth(root: Path, queries: np.ndarray, filters: list[str] | None) -> tuple[np.ndarray, float]:
    """Exact top-10 ids for every query, unfiltered (``filters`` None) or with its own filter."""
    from clothsim.features.store import FeatureStore
    from clothsim.index.topk import topk_over_blocks

    store = FeatureStore.open(root)
    started = time.perf_counter()
    if filters is None:
        return topk_over_blocks(queries, store.iter_blocks(16384), K)[0], time.perf_counter() - started
    codes, names = store.category_codes()
    truth = np.full((len(queries), K), -1, dtype=np.int64)
    for name in sorted(set(filters)):
        rows = [i for i, f in enumerate(filters) if f == name]
        ids, _ = topk_over_blocks(queries[rows], store.iter_blocks(16384, codes == names.index(name)), K)
        truth[rows, : ids.shape[1]] = ids
    return truth, time.perf_counter() - started


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


# ----- the child process -----------------------------------------------------------------------------
def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB."""
    current = peak = 0.0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return current, peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> dict:
    from clothsim.features.store import FeatureStore
    from clothsim.index import build_index, open_index

    spec = json.loads(args.worker)
    root, name, options = Path(spec["store"]), spec["backend"], spec["options"]
    if spec["phase"] == "build":
        started = time.perf_counter()
        index = build_index(FeatureStore.open(root), name, **options)
        build_s = time.perf_counter() - started
        close = getattr(index, "close", None)
        if close:
            close()
        return {"build_s": build_s, "build_peak_rss_mib": rss_mib()[1]}

    work = Path(spec["work"])
    queries = np.load(work / "queries.npy")
    filters = json.loads((work / "filters.json").read_text())
    own = json.loads((work / "filters-own.json").read_text())
    started = time.perf_counter()
    index = open_index(FeatureStore.open(root), name, **options)
    opened = time.perf_counter()
    extra = spec.get("search_options", {})
    index.search(queries[:1], K, **extra)
    first = time.perf_counter()
    out = {"open_s": opened - started, "open_plus_first_query_s": first - started}
    # What `clothsim serve` does before it takes requests (e.g. faiss-hnsw reads its category graphs);
    # timed apart, so the latencies below are those a server sees.
    warm = getattr(index, "warm", None)
    if warm is not None:
        t = time.perf_counter()
        warm()
        out["warm_s"] = time.perf_counter() - t

    n_single = spec["single_queries"]
    kinds = {"plain": None, "filtered": filters, "own": own}
    truth = {kind: np.load(work / f"{root.name}-truth-{kind}.npy") for kind in kinds}
    lat: dict[str, list[float]] = {kind: [] for kind in kinds}
    found: dict[str, list[list[int]]] = {kind: [] for kind in kinds}
    for i in range(n_single):  # the three kinds in turn, so machine noise hits them alike
        for kind, categories in kinds.items():
            t = time.perf_counter()
            hits = index.search(queries[i:i + 1], K, category=categories and categories[i], **extra)[0]
            lat[kind].append(time.perf_counter() - t)
            found[kind].append([h.id for h in hits])
    batch = spec["batch"]
    n_batched = min(len(queries), max(batch, spec["batched_queries"]))
    t = time.perf_counter()
    for lo in range(0, n_batched, batch):
        index.search(queries[lo:lo + batch], K, **extra)
    batched_s = time.perf_counter() - t

    def ms(seconds: list[float], q: float) -> float:
        return 1000 * float(np.percentile(seconds, q))

    def recall(got: list[list[int]], ref: np.ndarray) -> float:
        return float(np.mean([len(set(g) & set(r[r >= 0].tolist())) / max(int((r >= 0).sum()), 1)
                              for g, r in zip(got, ref)]))

    current, peak = rss_mib()
    out.update({
        "p50_ms": ms(lat["plain"], 50), "p99_ms": ms(lat["plain"], 99),
        "single_qps": float(n_single / sum(lat["plain"])), "qps": float(n_batched / batched_s),
        "recall_at_10": recall(found["plain"], truth["plain"][:n_single]),
        "filtered_p50_ms": ms(lat["filtered"], 50), "filtered_p99_ms": ms(lat["filtered"], 99),
        "filtered_recall_at_10": recall(found["filtered"], truth["filtered"][:n_single]),
        "own_filtered_p50_ms": ms(lat["own"], 50), "own_filtered_p99_ms": ms(lat["own"], 99),
        "own_filtered_recall_at_10": recall(found["own"], truth["own"][:n_single]),
        "rss_mib": current, "peak_rss_mib": peak, "single_queries": n_single, "batched_queries": n_batched,
    })
    close = getattr(index, "close", None)
    if close:
        close()
    return out


def run_child(spec: dict, timeout: float) -> dict:
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{spec['backend']} {spec['phase']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----- the driver --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--backends", nargs="+", default=["exact", "faiss-hnsw", "faiss-ivfpq", "milvus"])
    parser.add_argument("--queries", type=int, default=200, help="single queries per backend (default 200)")
    parser.add_argument("--exact-queries", type=int, default=20,
                        help="single queries for the exact backend, which scans everything (default 20)")
    parser.add_argument("--batch", type=int, default=64, help="queries per batched call (default 64)")
    parser.add_argument("--clusters", type=int, default=None, help="mixture components (default rows/1000)")
    parser.add_argument("--categories", type=int, default=50)
    parser.add_argument("--shared", type=float, default=0.55,
                        help="weight of the direction every item shares (default 0.55; 0 with --category-weight 0: "
                             "clusters with nothing in common)")
    parser.add_argument("--category-weight", type=float, default=0.45,
                        help="weight of the direction a category's clusters share (default 0.45)")
    parser.add_argument("--spread", type=float, default=0.2,
                        help="spread of a cluster along each of its 16 directions (default 0.2)")
    parser.add_argument("--sweep", action="append", default=[], metavar="NAME:KEY=V1,V2",
                        help="query a backend again with each value of a search option, e.g. "
                             "faiss-hnsw:efSearch=64,128,256 (one row each; no rebuild)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend-option", action="append", default=[], metavar="NAME:KEY=VALUE",
                        help="an option of one backend, e.g. faiss-hnsw:M=16 (repeatable)")
    parser.add_argument("--max-rows", action="append", default=[], metavar="NAME=N",
                        help="measure a backend on the first N rows only (repeatable)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores go (default a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the stores and built backends afterwards")
    parser.add_argument("--reuse-built", action="store_true",
                        help="measure a backend already built in --workdir (kept by --keep) instead of building it")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per child process")
    parser.add_argument("--json", action="store_true", help="print the results as a JSON list")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    from clothsim.index.base import parse_option_pairs

    options: dict[str, dict] = {name: {} for name in args.backends}
    for key, value in parse_option_pairs(args.backend_option).items():
        name, _, option = key.partition(":")
        if name not in options or not option:
            raise SystemExit(f"--backend-option {key}: give NAME:KEY=VALUE with NAME one of {args.backends}")
        options[name][option] = value
    sweeps: dict[str, tuple[str, list]] = {}
    for item in args.sweep:
        target, _, values = item.partition("=")
        name, _, key = target.partition(":")
        if name not in options or not key or not values:
            raise SystemExit(f"--sweep {item}: give NAME:KEY=V1,V2 with NAME one of {args.backends}")
        sweeps[name] = (key, [parse_option_pairs([f"v={v}"])["v"] for v in values.split(",")])
    sizes = {name: args.rows for name in args.backends}
    for item in args.max_rows:
        name, _, n = item.partition("=")
        if name not in sizes:
            raise SystemExit(f"--max-rows {item}: {name!r} is not among --backends")
        sizes[name] = min(args.rows, int(n))

    work = args.workdir or Path(tempfile.mkdtemp(prefix="clothsim-index-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    mix = Mixture(args.dim, args.clusters or max(10, args.rows // 1000), args.seed,
                  categories=args.categories, shared=args.shared, category_weight=args.category_weight,
                  spread=args.spread)
    n_q = max(args.queries, args.batch)
    queries, clusters = mix.points(0, n_q, stream=1)  # fresh points of the same clusters
    rng = np.random.default_rng(args.seed + 1)
    filters = [f"c{int(c):02d}" for c in rng.integers(min(args.categories, mix.clusters), size=n_q)]
    own = [f"c{int(c) % args.categories:02d}" for c in clusters]  # "more like this, same category"
    np.save(work / "queries.npy", queries)
    (work / "filters.json").write_text(json.dumps(filters))
    (work / "filters-own.json").write_text(json.dumps(own))
    results = []
    try:
        stores: dict[int, Path] = {}
        for n in sorted(set(sizes.values()), reverse=True):
            root = work / f"store-{n}"
            if not (root / "manifest.json").is_file():
                print(f"writing a store of {n:,} x {args.dim} ({args.dtype}) ...", file=sys.stderr, flush=True)
                seconds = build_store(root, n, mix, args.categories, args.dtype)
                print(f"  written in {seconds:.0f} s", file=sys.stderr, flush=True)
            for kind, kind_filters in (("plain", None), ("filtered", filters), ("own", own)):
                path = work / f"{root.name}-truth-{kind}.npy"
                if not path.is_file():
                    truth, seconds = ground_truth(root, queries, kind_filters)
                    np.save(path, truth)
                    print(f"  exact ground truth for {n_q} queries ({kind}) in {seconds:.0f} s",
                          file=sys.stderr, flush=True)
            stores[n] = root
        for name in args.backends:
            root = stores[sizes[name]]
            print(f"{name} over {sizes[name]:,} rows ...", file=sys.stderr, flush=True)
            base = {"store": str(root), "backend": name, "options": options[name], "work": str(work)}
            built = {"build_s": 0.0, "build_peak_rss_mib": None}
            single = args.exact_queries if name == "exact" else args.queries
            query = {**base, "phase": "query", "single_queries": min(single, n_q), "batch": args.batch,
                     "batched_queries": args.exact_queries * 3 if name == "exact" else n_q}
            variants = [{}] + [{sweeps[name][0]: v} for v in sweeps.get(name, (None, []))[1]]
            try:
                reuse = args.reuse_built and (root / "backends" / name).is_dir()
                if name != "exact" and not reuse:
                    built = run_child({**base, "phase": "build"}, args.timeout)
                elif reuse:
                    built = {"build_s": None, "build_peak_rss_mib": None, "reused_build": True}
                disk = folder_mib(root) - folder_mib(root / "backends") if name == "exact" else \
                    folder_mib(root / "backends" / name)
                for search_options in variants:
                    load_before = os.getloadavg()[0]
                    measured = run_child({**query, "search_options": search_options}, args.timeout)
                    row = {"backend": name, "rows": sizes[name], "dim": args.dim, "options": options[name],
                           "search_options": search_options, "disk_mib": disk, **built, **measured,
                           "load_avg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
                    results.append(row)
                    built_s = "reused" if row["build_s"] is None else f"{row['build_s']:.1f} s"
                    print(f"  built {built_s}, {search_options or 'defaults'}: recall@10 "
                          f"{row['recall_at_10']:.3f}, p50 {row['p50_ms']:.2f} ms, {row['qps']:.0f} q/s batched",
                          file=sys.stderr, flush=True)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:  # one backend must not lose the others
                print(f"  {name} failed: {str(exc)[-500:]}", file=sys.stderr, flush=True)
                results.append({"backend": name, "rows": sizes[name], "error": str(exc)[-500:]})
            if name != "exact" and not args.keep:
                shutil.rmtree(root / "backends" / name, ignore_errors=True)  # disk back for the next one
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    exact = next((r for r in results if r["backend"] == "exact" and "error" not in r), None)
    for row in results:
        if "error" in row:
            continue
        same_rows = exact is not None and exact["rows"] == row["rows"]
        row["speedup_vs_exact"] = row["single_qps"] / exact["single_qps"] if same_rows else None
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results, args)
    return 0


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    print(f"clustered vectors ({args.clusters or max(10, args.rows // 1000)} clusters, {args.categories} categories), "
          f"dim {args.dim}, {args.dtype}, k={K}, {os.cpu_count()} CPU cores")
    head = (f"{'backend':<12} {'search':<16} {'rows':>9} {'build s':>8} {'disk MiB':>9} {'RSS MiB':>8} {'open+1st s':>10} "
            f"{'warm s':>6} {'p50 ms':>8} {'p99 ms':>8} {'batch q/s':>9} {'recall@10':>9} {'filt p50':>8} "
            f"{'filt p99':>8} {'filt rec':>8} {'own p50':>8} {'own rec':>8}")
    print(head)
    for r in results:
        if "error" in r:
            print(f"{r['backend']:<12} {r['rows']:>9,} failed: {r['error'][-200:]}")
            continue
        search = ",".join(f"{k}={v}" for k, v in r["search_options"].items()) or "defaults"
        build = "reused" if r["build_s"] is None else f"{r['build_s']:.1f}"
        print(f"{r['backend']:<12} {search:<16} {r['rows']:>9,} {build:>8} {r['disk_mib']:>9.0f} {r['rss_mib']:>8.0f} "
              f"{r['open_plus_first_query_s']:>10.2f} {r.get('warm_s', 0.0):>6.2f} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['qps']:>9.0f} {r['recall_at_10']:>9.3f} {r['filtered_p50_ms']:>8.2f} "
              f"{r['filtered_p99_ms']:>8.2f} {r['filtered_recall_at_10']:>8.3f} {r['own_filtered_p50_ms']:>8.2f} "
              f"{r['own_filtered_recall_at_10']:>8.3f}  "
              f"(load {r['load_avg_1min'][0]}-{r['load_avg_1min'][1]})")


if __name__ == "__main__":
    sys.exit(main())
