"""``clothsim encoders``: list the registered encoders."""

from __future__ import annotations

import argparse
import json

from clothsim.encoders.registry import DEFAULT_ENCODER, list_encoders


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("encoders", help="list available encoders",
                                   description="List the encoders clothsim can build, with their vector sizes and "
                                               "what each needs beyond the core install.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _needs(name: str, family: bool) -> str:
    """What building the encoder needs: nothing beyond the core (a model file ships with it, or is saved
    in its model folder), or the torch extra (its network is built in torch)."""
    from clothsim.encoders.factory import ready_spec
    from clothsim.encoders.registry import family_registry

    if family:
        plugin = family_registry.get(name.split(":", 1)[0])
        return "- (folder)" if hasattr(plugin, "ready_spec") else "torch extra"
    return "-" if ready_spec(name) is not None else "torch extra"


def run(args: argparse.Namespace) -> int:
    infos = list_encoders()
    rows = [{**info.__dict__, "default": info.name == DEFAULT_ENCODER, "needs": _needs(info.name, info.family)}
            for info in infos]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<22} {'dim':>5} {'input':>6}  {'needs':<12} description")
    for row in rows:
        marker = " (default)" if row["default"] else ""
        dim = str(row["dim"]) if row["dim"] else "-"
        size = str(row["input_size"]) if row["input_size"] else "-"
        print(f"{row['name']:<22} {dim:>5} {size:>6}  {row['needs']:<12} {row['description']}{marker}")
    print("\n'torch extra': pip install 'clothsim[torch]'; '- (folder)': a model folder saved by training "
          "runs without it")
    return 0
