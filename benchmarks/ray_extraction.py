"""Ray's overhead on one node: images/s of the local engine and of the Ray engine on the same photos.

Usage:
    python benchmarks/ray_extraction.py --images ../shared/data/clothing-dataset-small/train \
        [--n 512] [--actors 1 2] [--ray-address ADDRESS] [--json]

Both engines build a complete index (decode, encode with the default runtime, write the store) of the
same N photos into fresh folders, in one run. Without ``--ray-address`` a local Ray with this machine's
CPUs is started once, before timing (its start-up is printed apart). On a cluster, pass
``--ray-address auto`` on the head node and ``--actors`` up to the number of worker CPUs: throughput grows
with actors until the storage or the driver's writing becomes the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from clothsim.data import read_catalog
from clothsim.similarity_index import SimilarityIndex


def build(records, folder: Path, **options) -> float:
    start = time.perf_counter()
    SimilarityIndex.build(records, folder, progress=False, **options)
    return len(records) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ray-address", default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import ray

    catalogue = read_catalog(args.images)
    records = catalogue[:: max(1, len(catalogue) // args.n)][: args.n]
    started = time.perf_counter()
    ray.init(address=args.ray_address, num_cpus=None if args.ray_address else os.cpu_count(),
             include_dashboard=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - started
    result = {"images": len(records), "cpus": int(ray.cluster_resources().get("CPU", 0)),
              "ray_start_s": round(ray_start_s, 1)}
    with tempfile.TemporaryDirectory(prefix="clothsim-ray-bench-") as work:
        work = Path(work)
        build(records[:32], work / "warm")  # the ONNX export and first-call costs, outside the timing
        result["local_img_s"] = round(build(records, work / "local", batch_size=args.batch), 1)
        for actors in args.actors:
            rate = build(records, work / f"ray{actors}", batch_size=args.batch, engine="ray",
                         engine_options={"ray_address": args.ray_address, "actors": actors})
            result[f"ray_{actors}_actors_img_s"] = round(rate, 1)
    ray.shutdown()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['images']} photos, {result['cpus']} CPUs in the cluster (Ray started in {ray_start_s:.1f} s)")
    print(f"local engine           {result['local_img_s']:8.1f} images/s")
    for actors in args.actors:
        rate = result[f"ray_{actors}_actors_img_s"]
        print(f"ray, {actors} actor(s)         {rate:8.1f} images/s  ({rate / result['local_img_s']:.2f} x local)")


if __name__ == "__main__":
    main()
