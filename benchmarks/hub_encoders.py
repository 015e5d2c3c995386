"""Hub encoders, measured: a ViT-B/16 image tower on ONNX Runtime against eager torch on the same batch,
and the end-to-end latency of a text query (clean and tokenize, encode with the text tower, search a 100k
index).

Usage:
    python benchmarks/hub_encoders.py [--batch 8] [--repeats 3] [--queries 50] [--items 100000]

Random weights serve for speed (the work per image does not depend on the weights). Both runtimes get the
same threads (every core this process may use) and the same batch, measured side by side in one run, so
the ratio holds on a busy machine even where the absolute times do not. The text query uses the text
tower of OpenCLIP's ViT-B-32 (12 layers, 77 tokens) exported to ONNX, exactly as a CLIP index keeps it,
and an exact index of 100,000 random unit vectors of its size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def _best_of(run, repeats: int) -> float:
    run()  # warm-up: first-call allocations and kernel choices are not the steady state
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def image_tower(batch_size: int, repeats: int) -> dict:
    import torch

    from clothsim.encoders.factory import create_encoder
    from clothsim.runtimes import default_threads

    threads = default_threads()
    torch.set_num_threads(threads)
    name = "open_clip:ViT-B-16"
    eager = create_encoder(name, weights="random", runtime="torch")
    onnx = create_encoder(name, weights="random", runtime="onnx", threads=threads)
    batch = np.random.default_rng(0).standard_normal((batch_size, 3, 224, 224)).astype(np.float32)
    agreement = float(np.min(np.sum(eager.embed(batch) * onnx.embed(batch), axis=1)))
    torch_s = _best_of(lambda: eager.embed(batch), repeats)
    onnx_s = _best_of(lambda: onnx.embed(batch), repeats)
    return {"encoder": name, "batch": batch_size, "threads": threads, "torch_images_per_s": batch_size / torch_s,
            "onnx_images_per_s": batch_size / onnx_s, "speedup": torch_s / onnx_s, "min_cos": agreement}


def text_query(n_items: int, n_queries: int) -> dict:
    from clothsim.data.records import CatalogRecord
    from clothsim.encoders.factory import build_network
    from clothsim.features.store import FeatureStore
    from clothsim.index.exact import ExactBackend
    from clothsim.runtimes.onnx_text import OnnxTextEncoder

    network = build_network("open_clip:ViT-B-32", weights="random")
    text = OnnxTextEncoder(network.spec)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as parent:
        folder = os.path.join(parent, "index")
        store = FeatureStore.create(folder, fingerprint=network.fingerprint())
        for start in range(0, n_items, 20_000):
            rows = min(20_000, n_items - start)
            vectors = rng.standard_normal((rows, network.dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.append(vectors, [CatalogRecord(f"/catalogue/{start + i}.jpg", "dress") for i in range(rows)],
                         sources=[(1, 1)] * rows)
        backend = ExactBackend().open(FeatureStore.open(folder))
        queries = [f"a {c} {g} with {p}" for c in ("red", "navy", "white", "striped", "floral")
                   for g in ("summer dress", "denim jacket", "wool coat", "sneaker", "skirt")
                   for p in ("buttons", "a belt")][:n_queries]
        backend.search(text.encode([queries[0]]), 10)  # warm-up
        latencies = []
        for query in queries:
            started = time.perf_counter()
            backend.search(text.encode([query]), 10)
            latencies.append((time.perf_counter() - started) * 1000.0)
    return {"items": n_items, "queries": len(latencies), "p50_ms": statistics.median(latencies),
            "p90_ms": float(np.percentile(latencies, 90)), "max_ms": max(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")
    tower = image_tower(args.batch, args.repeats)
    print(f"image tower {tower['encoder']} (random weights), batch {tower['batch']}, {tower['threads']} threads: "
          f"torch {tower['torch_images_per_s']:.2f} images/s, ONNX Runtime {tower['onnx_images_per_s']:.2f} images/s, "
          f"ONNX/torch {tower['speedup']:.2f}x (min cos {tower['min_cos']:.6f})")
    query = text_query(args.items, args.queries)
    print(f"text query end to end (tokenize, encode, exact top-10 of {query['items']} items), {query['queries']} "
          f"queries: p50 {query['p50_ms']:.1f} ms, p90 {query['p90_ms']:.1f} ms, max {query['max_ms']:.1f} ms")
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
