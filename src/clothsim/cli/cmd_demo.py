"""``clothsim demo``: the main job, with nothing to prepare."""

from __future__ import annotations

import argparse

from clothsim.cli.options import add_encoder_options, add_extraction_options, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="index a sample, query held-out images, report precision@k and draw a grid",
        description="Without --data: a Fashion-MNIST sample bundled with clothsim (MIT). With --data: "
                    "your catalogue, test split queried against train split.",
        epilog="examples:\n  clothsim demo\n  clothsim demo --data ../shared/data/clothing-dataset-small",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="catalogue to use instead of the bundled sample")
    parser.add_argument("--out", default="clothsim-demo", help="output folder (default clothsim-demo/)")
    parser.add_argument("-k", type=positive_int, default=5, help="results per query in the grid")
    add_encoder_options(parser)
    add_extraction_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from clothsim.demo import run_demo

    result = run_demo(args.data, args.out, encoder=args.encoder, weights=args.weights, k=args.k,
                      device=args.device, batch_size=args.batch_size, num_workers=args.workers,
                      progress=not args.quiet)
    report = result.report
    print(f"data:     {result.data}")
    print(f"encoder:  {result.encoder}")
    print(f"gallery:  {result.n_gallery} images   queries: {result.n_queries} images")
    print(f"{'':<14}{'clothsim':>10}{'chance':>10}")
    for k, value in sorted(report.precision.items()):
        print(f"precision@{k:<4}{value:>10.3f}{report.chance_precision:>10.3f}")
    print(f"index:    {result.index_dir}")
    print(f"grid:     {result.grid_path}")
    if result.failures:
        print(f"skipped {len(result.failures)} undecodable file(s):")
        for failure in result.failures:
            print(f"  {failure['path']}: {failure['reason']}")
    return 0
