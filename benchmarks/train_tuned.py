"""Measurements for the tuned encoder: what runs the frozen lower layers fastest, and which
settings win on the validation split.

    .venv/bin/python benchmarks/train_tuned.py lower --data ../shared/data/clothing-dataset-small --images 96
    .venv/bin/python benchmarks/train_tuned.py sweep --data ../shared/data/clothing-dataset-small \
        --cache-dir /work/cache/tuned --out /work/cache/tuned-models
    .venv/bin/python benchmarks/train_tuned.py test --data ../shared/data/clothing-dataset-small \
        --cache-dir /work/cache/tuned /work/cache/tuned-models/ms-l1

``lower`` times the frozen lower part (efficientnet_lite0 up to the cut) in eager torch and in ONNX Runtime
on the same decoded views and checks that both give the same maps. ``sweep`` trains a few settings on one
shared cache with the test split never read (``evaluate_test=False``) and prints validation P@5 per
setting, best first: the winner is what the README's ``clothsim train`` command uses. ``test`` then scores
finished model folders on the test split (read here for the first time) against the pretrained default.
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
    from clothsim.training.lower_outputs import AugmentConfig, LowerPart, _ViewDataset
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


def test_report(args: argparse.Namespace) -> None:
    """Test P@k of finished model folders (picked on validation) against the pretrained default.

    It reads the train views cached by the sweep and caches the test split once (plain view), then
    scores each model exactly as ``fit_tuned`` does at its end.
    """
    import json
    from pathlib import Path

    from clothsim.data import read_catalog
    from clothsim.training.lower_outputs import AugmentConfig, LowerPart, cache_split
    from clothsim.training.tuned_encoder import load_tuned_encoder
    from clothsim.training.tuned_trainer import TuneConfig, _test_report, assign_splits

    records = read_catalog(args.data)
    for folder in args.models:
        meta = json.loads((Path(folder) / "config.json").read_text())
        settings = dict(meta["train_config"])
        settings["augment"] = AugmentConfig(**settings["augment"])
        config = TuneConfig(**settings)
        rows = assign_splits(records, config.val_fraction, config.test_fraction, config.seed)
        encoder = load_tuned_encoder(folder)
        network = encoder.graph.network
        part = LowerPart(encoder_backbone(config), encoder.graph.lower, network.config.cut)
        part.use_onnx()

        def cache(split_rows, views, what):
            return cache_split(part, split_rows, views, Path(args.cache_dir), config.augment, config.seed,
                               num_workers=1, what=what)

        train_cache = cache([r for r in rows if r.split == "train"], config.views, "train")
        layers = pretrained_upper(config, network.config.cut)
        report, _ = _test_report(rows, train_cache, network, layers, torch.device("cpu"), config, cache, [1, 5, 10])
        pre, tuned = report["pretrained"], report["tuned"]
        print(f"{folder}: best epoch {meta['best_epoch']} (validation P@5 {meta['best_val_p@5']:.3f}); "
              f"test {report['n_queries']} queries against {report['n_gallery']} train images")
        for name, rep in (("pretrained default", pre), ("tuned", tuned)):
            print(f"  {name:18s} " + "  ".join(f"P@{k} {v:.3f}" for k, v in rep["precision"].items())
                  + f"  mAP@10 {rep['map_at_k']:.3f}")
        print("  per category P@5 (pretrained -> tuned): " + ", ".join(
            f"{c} {pre['per_category_precision'][c]['5']:.2f}->{v['5']:.2f}"
            for c, v in sorted(tuned["per_category_precision"].items())), flush=True)


def encoder_backbone(config):
    from clothsim import create_encoder

    return create_encoder(config.backbone, runtime="torch")


def pretrained_upper(config, cut: int) -> torch.nn.Module:
    from clothsim.training.tuned_model import backbone_layers

    layers, _ = backbone_layers(encoder_backbone(config))
    return torch.nn.Sequential(*layers[cut:]).eval().requires_grad_(False)


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
    te = sub.add_parser("test")
    te.add_argument("--data", required=True)
    te.add_argument("--cache-dir", required=True)
    te.add_argument("models", nargs="+")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    {"lower": measure_lower, "sweep": sweep, "test": test_report}[args.what](args)


if __name__ == "__main__":
    main()
