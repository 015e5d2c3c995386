"""``clothsim encoders``: list the registered encoders."""

from __future__ import annotations

import argparse
import json

from clothsim.encoders.registry import DEFAULT_ENCODER, list_encoders


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("encoders", help="list available encoders",
                                   description="List the encoders clothsim can build, with their vector sizes.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def run(args: argparse.Namespace) -> int:
    infos = list_encoders()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    print(f"{'name':<22} {'dim':>5} {'input':>6}  description")
    for info in infos:
        marker = " (default)" if info.name == DEFAULT_ENCODER else ""
        dim = str(info.dim) if info.dim else "-"
        size = str(info.input_size) if info.input_size else "-"
        print(f"{info.name:<22} {dim:>5} {size:>6}  {info.description}{marker}")
    return 0
