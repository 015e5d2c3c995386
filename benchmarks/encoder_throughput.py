"""Embedding throughput of built-in encoders on this machine's CPU (images per second).

Usage:
    python benchmarks/encoder_throughput.py [--encoders efficientnet_lite0 vgg16] [--batch 32]
        [--batches 3] [--weights random|PATH] [--threads N]

Times ``encoder.embed`` on random tensors of the encoder's input size (decoding and resizing images
are not included), after one warm-up batch; reports the median over ``--batches`` timed batches, in
wall-clock images/s and in images per CPU-second of this process (less sensitive to other load on a
shared machine). Random weights by default: the speed does not depend on their values, and no
download is needed.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from clothsim.encoders import create_encoder


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(name: str, weights: str, batch_size: int, batches: int) -> tuple[float, float, float]:
    """Return (median images/s, median images per CPU-second, build seconds) for one encoder."""
    start = time.perf_counter()
    encoder = create_encoder(name, weights=weights)
    built = time.perf_counter() - start
    size = encoder.input_size
    batch = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    encoder.embed(batch)  # warm-up: first calls pick kernels and allocate
    rates, cpu_rates = [], []
    for _ in range(batches):
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        encoder.embed(batch)
        rates.append(batch_size / (time.perf_counter() - start))
        cpu_rates.append(batch_size / max(_cpu_seconds() - cpu_start, 1e-9))
    return statistics.median(rates), statistics.median(cpu_rates), built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["efficientnet_lite0", "vgg16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--weights", default="random")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name in args.encoders:
        rate, cpu_rate, built = measure(name, args.weights, args.batch, args.batches)
        print(f"{name:20s} {rate:8.1f} images/s  {cpu_rate:8.1f} images/CPU-s  (built in {built:.1f} s)")


if __name__ == "__main__":
    main()
