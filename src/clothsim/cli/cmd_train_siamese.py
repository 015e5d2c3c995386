"""``clothsim train-siamese``: train a Siamese head over cached CNN feature maps."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clothsim.defaults import (
    DEFAULT_CONV5_EMBEDDING_DIM,
    DEFAULT_CONV5_EPOCHS,
    DEFAULT_CONV5_PATIENCE,
    DEFAULT_DEVICE,
    DEFAULT_SEED,
    DEFAULT_SIAMESE_BATCH_SIZE,
    DEFAULT_SIAMESE_DROPOUT,
    DEFAULT_SIAMESE_EMBEDDING_DIM,
    DEFAULT_SIAMESE_ENCODER,
    DEFAULT_SIAMESE_EPOCHS,
    DEFAULT_SIAMESE_LR,
    DEFAULT_SIAMESE_MARGIN,
    DEFAULT_SIAMESE_NEGATIVE_RATIO,
    DEFAULT_SIAMESE_PAIR_BATCH,
    DEFAULT_SIAMESE_PATIENCE,
    DEFAULT_SIAMESE_WEIGHT_DECAY,
    DEFAULT_SIAMESE_WORKERS,
    DEFAULT_VAL_FRACTION,
)
from clothsim.cli.options import add_data_options, add_runtime_option, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train-siamese", help="train a Siamese network (contrastive loss) on a catalogue",
        description="Cache the base CNN's feature maps of every image (once; resumable), then train a "
                    "Siamese head on pairs of the train split, validated on the validation split (or a "
                    "seeded share of train), with early stopping. Writes siamese.pt, config.json, "
                    "history.json, loss.png and accuracy.png to --out. Use the result as the encoder "
                    "siamese:OUT with index/search/evaluate.",
        epilog="example:\n  clothsim train-siamese --data ../shared/data/clothing-dataset-small --out model/ \\\n"
               "      --weights ../shared/weights/vgg16_features_imagenet.pth\n"
               "  clothsim index photos/train --encoder siamese:model/ --out catalog/\n"
               "  clothsim train-siamese --data DIR --out model5/ --weights vgg16.pth --fine-tune conv5\n"
               "  clothsim index photos/train --encoder tuned:model5/ --out catalog/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="catalogue: folder per category, CSV, or DeepFashion root")
    parser.add_argument("--out", required=True, help="model folder to write")
    add_data_options(parser)
    parser.add_argument("--encoder", default=DEFAULT_SIAMESE_ENCODER,
                        help=f"base CNN with feature maps (default {DEFAULT_SIAMESE_ENCODER})")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="base CNN weights file (default: the official pretrained weights)")
    parser.add_argument("--device", default=DEFAULT_DEVICE,
                        help=f"torch device for feature extraction (default {DEFAULT_DEVICE})")
    add_runtime_option(parser)
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="where feature maps are cached (default $CLOTHSIM_CACHE/feature_maps)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_SIAMESE_BATCH_SIZE,
                        help=f"images per forward pass (default {DEFAULT_SIAMESE_BATCH_SIZE})")
    parser.add_argument("--workers", type=int, default=DEFAULT_SIAMESE_WORKERS,
                        help=f"image-decoding processes (default {DEFAULT_SIAMESE_WORKERS})")
    parser.add_argument("--fine-tune", choices=["head", "conv5"], default="head",
                        help="head: a head over cached conv5 maps (fast; default). conv5: VGG16's conv5 block "
                             "learns inside the weight-sharing branches too (pool4 cached once); writes a model "
                             "used as tuned:OUT, with a test report")
    group = parser.add_argument_group("model and training")
    group.add_argument("--embedding-dim", type=positive_int, default=None,
                       help=f"embedding size (default {DEFAULT_SIAMESE_EMBEDDING_DIM}; {DEFAULT_CONV5_EMBEDDING_DIM} with "
                            "--fine-tune conv5)")
    group.add_argument("--dropout", type=float, default=DEFAULT_SIAMESE_DROPOUT,
                       help=f"dropout before the dense layer (default {DEFAULT_SIAMESE_DROPOUT:g})")
    group.add_argument("--norm", choices=["none", "batchnorm", "layernorm"], default="none",
                       help="normalisation after the dense layer (default none)")
    group.add_argument("--activation", choices=["none", "relu", "tanh"], default="none",
                       help="activation after the dense layer (default none)")
    group.add_argument("--margin", type=float, default=DEFAULT_SIAMESE_MARGIN,
                       help="contrastive margin; embeddings are unit vectors, distances lie in [0, 2] "
                            f"(default {DEFAULT_SIAMESE_MARGIN:.1f})")
    group.add_argument("--negative-ratio", type=float, default=DEFAULT_SIAMESE_NEGATIVE_RATIO,
                       help=f"dissimilar pairs per similar pair (default {DEFAULT_SIAMESE_NEGATIVE_RATIO:.1f})")
    group.add_argument("--pairs", choices=["category", "category+attributes"], default="category",
                       help="what makes a similar pair (default: same category)")
    group.add_argument("--epochs", type=positive_int, default=None, help=f"most epochs (default {DEFAULT_SIAMESE_EPOCHS}; {DEFAULT_CONV5_EPOCHS} with conv5)")
    group.add_argument("--pair-batch", type=positive_int, default=DEFAULT_SIAMESE_PAIR_BATCH,
                       help=f"pairs per step (default {DEFAULT_SIAMESE_PAIR_BATCH})")
    group.add_argument("--lr", type=float, default=DEFAULT_SIAMESE_LR, help=f"Adam learning rate (default {DEFAULT_SIAMESE_LR:g})")
    group.add_argument("--weight-decay", type=float, default=DEFAULT_SIAMESE_WEIGHT_DECAY,
                       help=f"Adam weight decay (default {DEFAULT_SIAMESE_WEIGHT_DECAY:g})")
    group.add_argument("--patience", type=int, default=None,
                       help="early stopping: epochs without a lower validation loss "
                            f"(0: off; default {DEFAULT_SIAMESE_PATIENCE}), with conv5 without a better validation "
                            f"P@5 (default {DEFAULT_CONV5_PATIENCE})")
    group.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                       help=f"share of train held out when the data has no validation split (default {DEFAULT_VAL_FRACTION:g})")
    group.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from clothsim.data import read_catalog
    from clothsim.training.fit import ACCURACY_PLOT, LOSS_PLOT, fit_siamese_on_catalog
    from clothsim.training.trainer import TrainConfig

    # Keep CPU training polite on shared machines unless the user configured torch otherwise.
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    if args.fine_tune == "conv5":
        return _run_conv5(args)
    config = TrainConfig(
        embedding_dim=args.embedding_dim or DEFAULT_SIAMESE_EMBEDDING_DIM, dropout=args.dropout, norm=args.norm, activation=args.activation,
        margin=args.margin, negative_ratio=args.negative_ratio, pair_rule=args.pairs, epochs=args.epochs or DEFAULT_SIAMESE_EPOCHS,
        batch_size=args.pair_batch, learning_rate=args.lr, weight_decay=args.weight_decay,
        patience=DEFAULT_SIAMESE_PATIENCE if args.patience is None else args.patience, val_fraction=args.val_fraction, seed=args.seed,
    )
    records = read_catalog(args.data, format=args.format)
    result, cache = fit_siamese_on_catalog(
        records, args.out, config=config, encoder=args.encoder, weights=args.weights, device=args.device,
        runtime=args.runtime,
        cache_root=args.cache_dir, batch_size=args.batch_size, num_workers=args.workers, progress=not args.quiet,
    )
    best = result.history[result.best_epoch - 1]
    out = Path(args.out)
    print(f"trained {len(result.history)} epoch(s) in {result.seconds:.1f} s; best epoch {result.best_epoch}: "
          f"val loss {best['val_loss']:.4f}, val pair accuracy {best['val_accuracy']:.3f} "
          f"(distance < {result.threshold:.3f}, similarity > {best['threshold_similarity']:.3f})")
    print(f"model written to {out}/ (plots {out / LOSS_PLOT}, {out / ACCURACY_PLOT}); feature maps cached in "
          f"{cache.root}")
    if cache.failures:
        print(f"{len(cache.failures)} file(s) could not be decoded and were skipped: "
              + json.dumps([f['path'] for f in cache.failures]))
    print(f"use it with: clothsim index DATA --encoder siamese:{out} --out catalog/")
    return 0


def _run_conv5(args: argparse.Namespace) -> int:
    from clothsim.data import read_catalog
    from clothsim.errors import UsageError
    from clothsim.training.siamese_conv5 import siamese_conv5_config
    from clothsim.training.tuned_trainer import REPORT_MD, fit_tuned

    if args.encoder != "vgg16":
        raise UsageError(f"--fine-tune conv5 fine-tunes VGG16's conv5 block; --encoder {args.encoder} has none")
    config = siamese_conv5_config(embedding_dim=args.embedding_dim or DEFAULT_CONV5_EMBEDDING_DIM,
                                  epochs=args.epochs or DEFAULT_CONV5_EPOCHS,
                                  patience=DEFAULT_CONV5_PATIENCE if args.patience is None else args.patience, lr=args.lr,
                                  seed=args.seed)
    records = read_catalog(args.data, format=args.format)
    result = fit_tuned(records, args.out, config, weights=args.weights, device=args.device, runtime=args.runtime,
                       cache_dir=args.cache_dir, num_workers=args.workers, progress=not args.quiet)
    best = result.history[result.best_epoch]
    out = Path(args.out)
    print(f"pool4 cached in {result.seconds['cache']:.1f} s; {len(result.history) - 1} epoch(s) in "
          f"{result.seconds['train']:.1f} s; best epoch {result.best_epoch}: validation P@5 {best['val_p@5']:.3f}")
    if result.report is not None:
        pre, tuned = result.report["pretrained"]["precision"], result.report["tuned"]["precision"]
        print(f"test P@5: {tuned['5']:.3f} with conv5 fine-tuned, {pre['5']:.3f} pretrained vgg16; see {out / REPORT_MD}")
    print(f"use it with: clothsim index DATA --encoder tuned:{out} --out catalog/")
    return 0
