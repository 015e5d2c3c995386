"""``clothsim train``: fine-tune a pretrained backbone on a catalogue; the result is the encoder tuned:OUT."""

from __future__ import annotations

import argparse
from pathlib import Path

from clothsim.defaults import (
    DEFAULT_DEVICE,
    DEFAULT_GEM_P,
    DEFAULT_K,
    DEFAULT_RUNTIME,
    DEFAULT_SEED,
    DEFAULT_TUNE_BACKBONE,
    DEFAULT_TUNE_BACKBONE_LR_SCALE,
    DEFAULT_TUNE_BATCH_SIZE,
    DEFAULT_TUNE_EMA,
    DEFAULT_TUNE_EMBEDDING_DIM,
    DEFAULT_TUNE_EPOCHS,
    DEFAULT_TUNE_HIDDEN_DIM,
    DEFAULT_TUNE_JITTER,
    DEFAULT_TUNE_LABELS,
    DEFAULT_TUNE_LOSS,
    DEFAULT_TUNE_LR,
    DEFAULT_TUNE_M,
    DEFAULT_TUNE_MEMBERS,
    DEFAULT_TUNE_MIN_SCALE,
    DEFAULT_TUNE_PATIENCE,
    DEFAULT_TUNE_POOLING,
    DEFAULT_TUNE_SCHEDULE,
    DEFAULT_TUNE_TRAIN_LAYERS,
    DEFAULT_TUNE_VIEWS,
    DEFAULT_TUNE_WEIGHT_DECAY,
    DEFAULT_TUNE_WORKERS,
)
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
    parser.add_argument("--backbone", default=DEFAULT_TUNE_BACKBONE,
                        help=f"pretrained encoder to fine-tune: {DEFAULT_TUNE_BACKBONE} (default), vgg16, or a timm CNN "
                             "(timm:resnet50.a1_in1k, ...)")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="backbone weights file (default: the official pretrained weights)")
    parser.add_argument("--device", default=DEFAULT_DEVICE,
                        help=f"torch device of the training, e.g. cuda (default {DEFAULT_DEVICE})")
    parser.add_argument("--runtime", default=DEFAULT_RUNTIME, choices=["auto", "onnx", "torch"],
                        help="what runs the frozen lower layers while caching (default auto: ONNX Runtime)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="cached lower-layer outputs (default $CLOTHSIM_CACHE/tuned)")
    parser.add_argument("--workers", type=int, default=DEFAULT_TUNE_WORKERS,
                        help=f"image-decoding processes (default {DEFAULT_TUNE_WORKERS})")
    parser.add_argument("--no-test", action="store_true",
                        help="do not read the test split at all (no report.md); for choosing settings")
    group = parser.add_argument_group("model")
    group.add_argument("--train-layers", type=int, default=DEFAULT_TUNE_TRAIN_LAYERS,
                       help=f"top backbone layers that learn (0: head only; default {DEFAULT_TUNE_TRAIN_LAYERS})")
    group.add_argument("--cached-layers", type=int, default=None,
                       help="top layers run at every step (>= --train-layers; the rest are cached)")
    group.add_argument("--pooling", choices=["gem", "avg", "max"], default=DEFAULT_TUNE_POOLING,
                       help=f"pooling (default {DEFAULT_TUNE_POOLING}; max: the Siamese study's global max pooling)")
    group.add_argument("--gem-p", type=float, default=DEFAULT_GEM_P, help=f"initial GeM exponent (default {DEFAULT_GEM_P:g})")
    group.add_argument("--fixed-p", action="store_true", help="keep the GeM exponent fixed")
    group.add_argument("--hidden-dim", type=int, default=DEFAULT_TUNE_HIDDEN_DIM,
                       help=f"head hidden layer width (default {DEFAULT_TUNE_HIDDEN_DIM}; 0: linear)")
    group.add_argument("--dim", type=positive_int, default=DEFAULT_TUNE_EMBEDDING_DIM,
                       help=f"embedding size (default {DEFAULT_TUNE_EMBEDDING_DIM})")
    group.add_argument("--flip", action="store_true", help="average each image with its mirror image at test time")
    group = parser.add_argument_group("training")
    group.add_argument("--loss", type=_losses, default=DEFAULT_TUNE_LOSS,
                       help=f"metric-learning loss, one of {', '.join(LOSS_CHOICES)} (default {DEFAULT_TUNE_LOSS}); "
                            "several comma-separated for --members, one per member in turn")
    group.add_argument("--members", type=positive_int, default=DEFAULT_TUNE_MEMBERS,
                       help="networks trained apart (own seed and loss) and saved as one encoder whose cosine is "
                            f"their mean (default {DEFAULT_TUNE_MEMBERS}); training takes about this many times as long")
    group.add_argument("--labels", choices=["category", "item"], default=DEFAULT_TUNE_LABELS,
                       help=f"what counts as the same (default {DEFAULT_TUNE_LABELS}; item: item ids, e.g. In-shop)")
    group.add_argument("--views", type=positive_int, default=DEFAULT_TUNE_VIEWS,
                       help=f"cached views per train image (default {DEFAULT_TUNE_VIEWS})")
    group.add_argument("--min-scale", type=float, default=DEFAULT_TUNE_MIN_SCALE,
                       help=f"random resized crop: smallest area share (default {DEFAULT_TUNE_MIN_SCALE:g})")
    group.add_argument("--jitter", type=float, default=DEFAULT_TUNE_JITTER,
                       help=f"colour jitter strength (default {DEFAULT_TUNE_JITTER:g})")
    group.add_argument("--epochs", type=positive_int, default=DEFAULT_TUNE_EPOCHS, help=f"most epochs (default {DEFAULT_TUNE_EPOCHS})")
    group.add_argument("--patience", type=int, default=DEFAULT_TUNE_PATIENCE,
                       help="stop after this many epochs without a better validation P@k "
                            f"(0: off; default {DEFAULT_TUNE_PATIENCE})")
    group.add_argument("--batch-size", type=positive_int, default=DEFAULT_TUNE_BATCH_SIZE,
                       help=f"rows per step (default {DEFAULT_TUNE_BATCH_SIZE})")
    group.add_argument("--m", type=positive_int, default=DEFAULT_TUNE_M, help=f"images per class in a batch (default {DEFAULT_TUNE_M})")
    group.add_argument("--lr", type=float, default=DEFAULT_TUNE_LR,
                       help=f"AdamW learning rate of the head (default {DEFAULT_TUNE_LR:g})")
    group.add_argument("--backbone-lr-scale", type=float, default=DEFAULT_TUNE_BACKBONE_LR_SCALE,
                       help=f"backbone layers learn at lr times this (default {DEFAULT_TUNE_BACKBONE_LR_SCALE:g})")
    group.add_argument("--schedule", choices=["constant", "cosine"], default=DEFAULT_TUNE_SCHEDULE,
                       help="learning rate: constant (default) or cosine decay to zero over --epochs")
    group.add_argument("--ema", type=float, default=DEFAULT_TUNE_EMA,
                       help="decay of a moving average of the weights, validated and saved (e.g. 0.99; 0: off)")
    group.add_argument("--weight-decay", type=float, default=DEFAULT_TUNE_WEIGHT_DECAY,
                       help=f"AdamW weight decay (default {DEFAULT_TUNE_WEIGHT_DECAY:g})")
    group.add_argument("--refit", action="store_true",
                       help="once validation has chosen each network's epochs, train it again on train and "
                            "validation together for that many epochs, and save that (more photos to learn "
                            "from; its validation P@k is the selection run's)")
    group.add_argument("-k", type=positive_int, default=DEFAULT_K,
                       help=f"the validation P@k that picks the epoch (default {DEFAULT_K})")
    group.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
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
    from clothsim.training.lower_outputs import AugmentConfig
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
