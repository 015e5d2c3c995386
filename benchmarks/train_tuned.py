"""Measurements for the tuned encoder (issue 14): what runs the frozen lower layers fastest, and which
settings win on the validation split.

    .venv/bin/python benchmarks/train_tuned.py lower --data ../shared/data/clothing-dataset-small --images 96
    .venv/bin/python benchmarks/train_tuned.py sweep --data ../shared/data/clothing-dataset-small \
        --cache-dir /work/cache/tuned --out /work/cache/tuned-models

``lower`` times the frozen lower part (efficientnet_lite0 up to the cut) in eager torch and in ONNX Runtime
on the same decoded views and checks that both give the same maps. ``sweep`` trains a few settings on one
shared cache with the test split never read (``evaluate_test=False``) and prints validation P@5 per
setting, best first: the winner is what the README's ``clothsim train`` command uses.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch


def measure_lower(args: argparse.Namespace) -> None:
    from clothsim import create_encoder
    from clothsim.data import read_catalog
    from clothsim.training.tuned_cache import AugmentConfig, LowerPart, _ViewDataset
    from clothsim.training.tuned_model import backbone_layers

    records = [r for r in read_catalog(args.data) if r.split == "train"][: args.images]
    backbone = create_encoder("efficientnet_lite0", runtime="torch")
    layers, _ = backbone_layers(backbone)
    cut = len(layers) - args.top
    dataset = _ViewDataset(records, backbone.preprocessing, 1, AugmentConfig(), 0)
    batch = torch.stack([dataset[i][0][0] for i in range(len(dataset))])
    torch_part = LowerPart(backbone, torch.nn.Sequential(*layers[:cut]), cut)
    onnx_part = LowerPart(backbone, torch.nn.Sequential(*layers[:cut]), cut)
    if not onnx_part.use_onnx():
        raise SystemExit("ONNX Runtime could not run the lower part")
    rows = {}
    outputs = {}
    for name, part in (("torch", torch_part), ("onnx", onnx_part)):
        part.run(batch[:8])  # warm-up
        t0 = time.perf_counter()
        outputs[name] = np.concatenate([part.run(batch[i:i + 24]) for i in range(0, len(batch), 24)])
        rows[name] = len(batch) / (time.perf_counter() - t0)
    gap = float(np.abs(outputs["torch"] - outputs["onnx"]).max())
    print(f"lower part: efficientnet_lite0 layers 0..{cut - 1} -> {torch_part.map_shape}, {len(batch)} views, "
          f"{torch.get_num_threads()} torch threads")
    for name, speed in rows.items():
        print(f"  {name:6s} {speed:7.1f} views/s")
    print(f"  onnx / torch: x{rows['onnx'] / rows['torch']:.2f}; largest difference {gap:.2e}")


SWEEP = {
    # name: TuneConfig overrides; every one trains on the same cache (cut at the top two layers).
    "ms-l1": dict(loss="multi-similarity", train_layers=1),
    "ns-l1": dict(loss="normalized-softmax", train_layers=1),
    "ns-l2": dict(loss="normalized-softmax", train_layers=2),
    "pa-l1": dict(loss="proxy-anchor", train_layers=1),
    "ns-l0": dict(loss="normalized-softmax", train_layers=0),
    "ms-l0": dict(loss="multi-similarity", train_layers=0),
}


def sweep(args: argparse.Namespace) -> None:
    from clothsim.data import read_catalog
    from clothsim.training.tuned_trainer import TuneConfig, fit_tuned

    records = read_catalog(args.data)
    names = args.only or list(SWEEP)
    results = []
    for name in names:
        config = TuneConfig(cached_layers=2, epochs=args.epochs, patience=args.patience, **SWEEP[name])
        t0 = time.perf_counter()
        result = fit_tuned(records, f"{args.out}/{name}", config, cache_dir=args.cache_dir, num_workers=1,
                           evaluate_test=False)
        best = result.history[result.best_epoch]["val_p@5"]
        results.append((best, name, result.best_epoch, len(result.history) - 1, time.perf_counter() - t0))
        print(f"{name}: validation P@5 {best:.3f} at epoch {result.best_epoch} "
              f"({result.seconds['train']:.0f} s training)", flush=True)
    pretrained = result.history[0]["pretrained_val_p@5"]
    print(f"\nvalidation P@5 (validation queried against train), pretrained default {pretrained:.3f}")
    print("setting   val P@5  best epoch  epochs run  seconds")
    for best, name, epoch, ran, seconds in sorted(results, reverse=True):
        print(f"{name:8s}  {best:7.3f}  {epoch:10d}  {ran:10d}  {seconds:7.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    lower = sub.add_parser("lower")
    lower.add_argument("--data", required=True)
    lower.add_argument("--images", type=int, default=96)
    lower.add_argument("--top", type=int, default=2, help="layers above the cut (default 2)")
    sw = sub.add_parser("sweep")
    sw.add_argument("--data", required=True)
    sw.add_argument("--cache-dir", required=True)
    sw.add_argument("--out", required=True)
    sw.add_argument("--epochs", type=int, default=30)
    sw.add_argument("--patience", type=int, default=5)
    sw.add_argument("--only", nargs="*", choices=list(SWEEP))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    (measure_lower if args.what == "lower" else sweep)(args)


if __name__ == "__main__":
    main()
