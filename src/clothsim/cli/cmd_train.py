"""``clothsim train``: fine-tune a pretrained backbone on a catalogue; the result is the encoder tuned:OUT."""

from __future__ import annotations

import argparse
from pathlib import Path

from clothsim.cli.options import add_data_options, positive_int

LOSS_CHOICES = ("multi-similarity", "contrastive", "proxy-anchor", "normalized-softmax")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="fine-tune an encoder on a catalogue (metric learning); use it as tuned:OUT",
        description="Cache the frozen lower layers' outputs for a few augmented views of every train image "
                    "(once; ONNX Runtime where available), then train the top layers, a pooling layer and a "
                    "projection head with a metric-learning loss on class-balanced batches. The epoch is "
                    "picked by validation P@k (validation queried against train); the test split is read "
                    "once, after training, for report.md (pretrained default against tuned, per category). "
                    "Writes tuned.pt, config.json, history.json, curves.png, report.md/json to --out.",
        epilog="example:\n  clothsim train --data ../shared/data/clothing-dataset-small --out model/\n"
               "  clothsim index photos/train --encoder tuned:model/ --out catalog/\n"
               "  clothsim evaluate --data photos --encoders efficientnet_lite0,tuned:model/ --out report/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="catalogue: folder per category, CSV, or DeepFashion root")
    parser.add_argument("--out", required=True, help="model folder to write")
    add_data_options(parser)
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help="pretrained encoder to fine-tune: efficientnet_lite0 (default), vgg16, or a timm CNN "
                             "(timm:resnet50.a1_in1k, ...)")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="backbone weights file (default: the official pretrained weights)")
    parser.add_argument("--device", default="cpu", help="torch device of the training, e.g. cuda (default cpu)")
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnx", "torch"],
                        help="what runs the frozen lower layers while caching (default auto: ONNX Runtime)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="cached lower-layer outputs (default $CLOTHSIM_CACHE/tuned)")
    parser.add_argument("--workers", type=int, default=1, help="image-decoding processes (default 1)")
    parser.add_argument("--no-test", action="store_true",
                        help="do not read the test split at all (no report.md); for choosing settings")
    group = parser.add_argument_group("model")
    group.add_argument("--train-layers", type=int, default=1,
                       help="top backbone layers that learn (0: head only; default 1)")
    group.add_argument("--cached-layers", type=int, default=None,
                       help="top layers run at every step (>= --train-layers; the rest are cached)")
    group.add_argument("--pooling", choices=["gem", "avg", "max"], default="gem",
                       help="pooling (default gem; max: the Siamese study's global max pooling)")
    group.add_argument("--gem-p", type=float, default=3.0, help="initial GeM exponent (default 3)")
    group.add_argument("--fixed-p", action="store_true", help="keep the GeM exponent fixed")
    group.add_argument("--hidden-dim", type=int, default=0, help="head hidden layer width (default 0: linear)")
    group.add_argument("--dim", type=positive_int, default=256, help="embedding size (default 256)")
    group.add_argument("--flip", action="store_true", help="average each image with its mirror image at test time")
    group = parser.add_argument_group("training")
    group.add_argument("--loss", type=_losses, default="multi-similarity",
                       help=f"metric-learning loss, one of {', '.join(LOSS_CHOICES)} (default multi-similarity); "
                            "several comma-separated for --members, one per member in turn")
    group.add_argument("--members", type=positive_int, default=1,
                       help="networks trained apart (own seed and loss) and saved as one encoder whose cosine is "
                            "their mean (default 1); training takes about this many times as long")
    group.add_argument("--labels", choices=["category", "item"], default="category",
                       help="what counts as the same (default category; item: item ids, e.g. In-shop)")
    group.add_argument("--views", type=positive_int, default=3, help="cached views per train image (default 3)")
    group.add_argument("--min-scale", type=float, default=0.5, help="random resized crop: smallest area share")
    group.add_argument("--jitter", type=float, default=0.2, help="colour jitter strength (default 0.2)")
    group.add_argument("--epochs", type=positive_int, default=30, help="most epochs (default 30)")
    group.add_argument("--patience", type=int, default=5,
                       help="stop after this many epochs without a better validation P@k (0: off; default 5)")
    group.add_argument("--batch-size", type=positive_int, default=64, help="rows per step (default 64)")
    group.add_argument("--m", type=positive_int, default=8, help="images per class in a batch (default 8)")
    group.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the head (default 1e-3)")
    group.add_argument("--backbone-lr-scale", type=float, default=0.1,
                       help="backbone layers learn at lr times this (default 0.1)")
    group.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                       help="learning rate: constant (default) or cosine decay to zero over --epochs")
    group.add_argument("--ema", type=float, default=0.0,
                       help="decay of a moving average of the weights, validated and saved (e.g. 0.99; 0: off)")
    group.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    group.add_argument("--refit", action="store_true",
                       help="once validation has chosen each network's epochs, train it again on train and "
                            "validation together for that many epochs, and save that (more photos to learn "
                            "from; its validation P@k is the selection run's)")
    group.add_argument("-k", type=positive_int, default=5, help="the validation P@k that picks the epoch (default 5)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def _losses(text: str) -> str:
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in LOSS_CHOICES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown loss {', '.join(unknown) or text!r}; choose from "
                                         f"{', '.join(LOSS_CHOICES)} (comma-separated for --members)")
    return ",".join(names)


def run(args: argparse.Namespace) -> int:
    import torch

    from clothsim.data import read_catalog
    from clothsim.training.tuned_cache import AugmentConfig
    from clothsim.training.tuned_trainer import CURVES, REPORT_MD, TuneConfig, fit_tuned

    # Polite on shared machines unless the user configured torch otherwise.
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    config = TuneConfig(
        backbone=args.backbone, train_layers=args.train_layers, cached_layers=args.cached_layers,
        pooling=args.pooling, gem_p=args.gem_p, learn_p=not args.fixed_p, hidden_dim=args.hidden_dim,
        embedding_dim=args.dim, flip=args.flip, loss=args.loss, labels=args.labels, views=args.views,
        augment=AugmentConfig(min_scale=args.min_scale, jitter=args.jitter), epochs=args.epochs,
        patience=args.patience, batch_size=args.batch_size, m=args.m, lr=args.lr,
        backbone_lr_scale=args.backbone_lr_scale, weight_decay=args.weight_decay,
        schedule=args.schedule, ema=args.ema, refit=args.refit, members=args.members, k=args.k,
        seed=args.seed)
    records = read_catalog(args.data, format=args.format)
    result = fit_tuned(records, args.out, config, weights=args.weights, device=args.device, runtime=args.runtime,
                       cache_dir=args.cache_dir, num_workers=args.workers, evaluate_test=not args.no_test,
                       progress=not args.quiet)
    k = args.k
    out = Path(args.out)
    epochs = sum(1 for row in result.history if row["epoch"] > 0)
    print(f"lower layers cached in {result.seconds['cache']:.1f} s ({result.lower_runtime}); "
          f"{epochs} epoch(s) in {result.seconds['train']:.1f} s; total {result.seconds['total']:.1f} s")
    pretrained = result.history[0][f"pretrained_val_p@{k}"]
    if len(result.members) > 1:
        for number, member in enumerate(result.members, 1):
            print(f"member {number} ({member['loss']}): best epoch {member['best_epoch']}, validation P@{k} "
                  f"{member[f'val_p@{k}']:.3f}")
        print(f"all {len(result.members)} members together: validation P@{k} {result.val_precision:.3f} "
              f"(pretrained default {pretrained:.3f})")
    else:
        print(f"best epoch {result.best_epoch}: validation P@{k} {result.val_precision:.3f} "
              f"(pretrained default {pretrained:.3f})")
    if result.refit:
        run = result.refit[0]
        print(f"refit on {run['rows']} train and validation images: "
              f"{', '.join(str(r['epochs']) for r in result.refit)} epoch(s) in {result.seconds['refit']:.1f} s "
              f"(the validation P@{k} above is the selection run's)")
    if result.report is not None:
        pre, tuned = result.report["pretrained"]["precision"], result.report["tuned"]["precision"]
        print(f"test P@{k}: {tuned[str(k)]:.3f} tuned, {pre[str(k)]:.3f} pretrained default "
              f"({result.report['n_queries']} queries against {result.report['n_gallery']}); see {out / REPORT_MD}")
    if result.failures:
        print(f"{len(result.failures)} file(s) could not be decoded and were skipped")
    print(f"model written to {out}/ (curves {out / CURVES}); use it with: "
          f"clothsim index DATA --encoder tuned:{out} --out catalog/")
    return 0
