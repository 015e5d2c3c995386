"""``clothsim fit-ensemble``: fit a weighted ensemble of encoders on a catalogue's train/validation splits."""

from __future__ import annotations

import argparse

from clothsim.defaults import DEFAULT_DEVICE, DEFAULT_ENSEMBLE_GRID_STEP, DEFAULT_ENSEMBLE_METHOD
from clothsim.cli.options import add_data_options, add_extraction_options
from clothsim.name_lists import split_names


def _mix(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--mix must be comma-separated numbers, got {text!r}") from exc


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fit-ensemble", help="fit a weighted ensemble of encoders (use it as ensemble:FOLDER)",
        description="Encode the train and validation splits with each part (cached), keep each larger part's "
                    "most category-discriminative columns (ANOVA F on train) down to the smallest part's size, "
                    "choose the parts' mixing weights by a grid search maximising validation P@5 against train "
                    "(unless --mix), and save the ensemble to --out. The test split is never read.",
        epilog="example:\n  clothsim fit-ensemble --data ../shared/data/clothing-dataset-small \\\n"
               "      --parts vgg16,efficientnet_lite0 --weights vgg16=vgg16_features_imagenet.pth --out ens/\n"
               "  clothsim index photos/ --encoder ensemble:ens/ --out catalog/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="catalogue with train (and validation) splits")
    add_data_options(parser)
    parser.add_argument("--parts", type=split_names, required=True, help="comma-separated part encoders")
    parser.add_argument("--weights", action="append", metavar="NAME=PATH",
                        help="local weights file of a part (repeatable), e.g. vgg16=vgg16.pth")
    parser.add_argument("--out", required=True, help="folder to save the fitted ensemble in")
    parser.add_argument("--cache", default=None, help="feature store cache (default <out>/stores)")
    parser.add_argument("--method", choices=["average", "concat"], default=DEFAULT_ENSEMBLE_METHOD,
                        help=f"weighted average or weighted concatenation (default {DEFAULT_ENSEMBLE_METHOD})")
    parser.add_argument("--mix", type=_mix, default=None, metavar="W1,W2",
                        help="fixed mixing weights of the parts instead of the validation search")
    parser.add_argument("--grid-step", type=float, default=DEFAULT_ENSEMBLE_GRID_STEP,
                        help=f"weight search grid step (default {DEFAULT_ENSEMBLE_GRID_STEP:g})")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=f"torch device (default {DEFAULT_DEVICE})")
    add_extraction_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clothsim.data import read_catalog
    from clothsim.ensemble import fit_from_catalog

    from clothsim.name_lists import parse_name_paths

    mix = args.mix
    weight_files = parse_name_paths(args.weights)
    records = read_catalog(args.data, format=args.format)
    cache = args.cache or str(Path(args.out) / "stores")
    model = fit_from_catalog(
        records, args.parts, cache, weight_files=weight_files, mix=mix,
        method=args.method, grid_step=args.grid_step, device=args.device, batch_size=args.batch_size,
        num_workers=args.workers, progress=not args.quiet)
    folder = model.save(args.out)
    weights = ", ".join(f"{p.name}={w:.2f}" for p, w in zip(model.parts, model.weights))
    print(f"fitted {model.label} ({model.method}, {model.dim}-d; weights {weights}, "
          f"{model.info.get('weights_chosen_by')}) on {model.info['n_train']} train and "
          f"{model.info['n_validation']} validation images")
    print(f"saved to {folder}; use it as --encoder ensemble:{Path(folder).resolve()}")
    return 0
