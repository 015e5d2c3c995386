"""``clothsim demo``: the main job, with nothing to prepare; ``--serve`` then opens it in a browser."""

from __future__ import annotations

import argparse

from clothsim.defaults import DEFAULT_HOST, DEFAULT_K, DEFAULT_PORT
from clothsim.cli.options import add_encoder_options, add_extraction_options, positive_int

#: How each timed step is named in the output.
STEP_LABELS = {"encoder": "load encoder", "index": "index gallery", "queries": "encode queries",
               "search": "search + metrics", "grid": "draw grid"}


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535 (bad ones are usage errors, exit 2)."""
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, got {value}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="index a sample, query held-out images, report precision@k and draw a grid",
        description="Index a gallery with the encoder, query held-out images against it, print\n"
                    "precision@1/5/10 against chance and the time of each step, and draw a grid.\n\n"
                    "Without --data: 300 clothing photos bundled with clothsim (CC0, from\n"
                    "clothing-dataset-small): 220 indexed, 80 held out as queries.\n"
                    "--data fashion-mnist: the bundled Fashion-MNIST sample (MIT), 400 + 100.\n"
                    "--data DIR: your catalogue, its test split queried against its train split.\n"
                    "--serve: afterwards, the search page on the index it built.",
        epilog="examples:\n  clothsim demo\n  clothsim demo --serve            # then open http://127.0.0.1:8000/\n"
               "  clothsim demo --data fashion-mnist\n"
               "  clothsim demo --data ../shared/data/clothing-dataset-small",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None,
                        help="catalogue to use instead of the bundled photos, or 'fashion-mnist'")
    parser.add_argument("--out", default="clothsim-demo", help="output folder (default clothsim-demo/)")
    parser.add_argument("-k", type=positive_int, default=DEFAULT_K,
                        help=f"results per query in the grid (default {DEFAULT_K})")
    parser.add_argument("--serve", action="store_true",
                        help="afterwards, serve the search page and REST API on the demo's index")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"with --serve: address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                        help=f"with --serve: port (default {DEFAULT_PORT})")
    add_encoder_options(parser)
    add_extraction_options(parser)
    return parser


def _serve(args: argparse.Namespace, index_dir: str) -> int:
    """Hand over to ``clothsim serve`` with its own defaults, so both commands serve alike."""
    from clothsim.cli import cmd_serve

    parser = argparse.ArgumentParser(prog="clothsim")
    cmd_serve.add_parser(parser.add_subparsers(dest="command"))
    argv = ["serve", "--index", index_dir, "--host", args.host, "--port", str(args.port), "--device", args.device,
            "--runtime", args.runtime]
    if args.weights is not None:
        argv += ["--weights", str(args.weights)]
    serve_args = parser.parse_args(argv)
    serve_args.verbose = getattr(args, "verbose", 0)
    return cmd_serve.run(serve_args)


def run(args: argparse.Namespace) -> int:
    from clothsim.demo import STEPS, run_demo

    result = run_demo(args.data, args.out, encoder=args.encoder, weights=args.weights, k=args.k,
                      device=args.device, runtime=args.runtime, batch_size=args.batch_size, num_workers=args.workers,
                      progress=not args.quiet)
    report = result.report
    print(f"data:     {result.data}")
    print(f"encoder:  {result.encoder}")
    print(f"gallery:  {result.n_gallery} images   queries: {result.n_queries} images")
    print(f"{'':<14}{'clothsim':>10}{'chance':>10}")
    for k, value in sorted(report.precision.items()):
        print(f"precision@{k:<4}{value:>10.3f}{report.chance_precision:>10.3f}")
    print("time:")
    for step in STEPS:
        seconds = result.timings[step]
        note = ""
        if step == "index":
            note = f"   ({result.n_gallery / seconds:.1f} images/s)" if seconds > 0 else ""
        elif step == "queries":
            note = f"   ({result.n_queries / seconds:.1f} images/s)" if seconds > 0 else ""
        print(f"  {STEP_LABELS[step]:<18}{seconds:>7.2f} s{note}")
    print(f"index:    {result.index_dir}")
    print(f"grid:     {result.grid_path}")
    if result.failures:
        print(f"skipped {len(result.failures)} undecodable file(s):")
        for failure in result.failures:
            print(f"  {failure['path']}: {failure['reason']}")
    if args.serve:
        return _serve(args, str(result.index_dir))
    return 0
