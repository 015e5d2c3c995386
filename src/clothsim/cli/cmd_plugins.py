"""``clothsim plugins``: every plug-in of every group, and the ones that failed to load."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plugins", help="list encoders, runtimes, index backends and catalogue readers (plug-ins)",
        description="List the plug-ins of each entry-point group (clothsim's own and third parties'), "
                    "with the error of any that failed to load.",
        epilog="A package adds one with a line in its pyproject.toml, e.g.\n"
               '  [project.entry-points."clothsim.encoders"]\n'
               '  my_encoder = "my_package.encoders:MyEncoder"',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _rows() -> list[dict[str, str]]:
    from clothsim.data.registry import reader_registry
    from clothsim.engines import engine_registry
    from clothsim.encoders.registry import encoder_registry, family_registry
    from clothsim.index.registry import backend_registry
    from clothsim.runtimes import runtime_registry

    rows = []
    for registry in (encoder_registry, family_registry, runtime_registry, engine_registry, backend_registry,
                     reader_registry):
        for name, plugin in registry.items():
            status = "ok"
            reason = getattr(plugin, "unavailable_reason", None)
            if callable(reason) and reason() is not None:
                status = f"unavailable: {reason()}"
            rows.append({"group": registry.group, "name": name, "status": status,
                         "description": getattr(plugin, "description", "")})
        for name, error in registry.broken().items():
            rows.append({"group": registry.group, "name": name, "status": f"broken: {error}", "description": ""})
    return rows


def run(args: argparse.Namespace) -> int:
    rows = _rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    group = None
    for row in rows:
        if row["group"] != group:
            group = row["group"]
            print(f"{group}:")
        status = "" if row["status"] == "ok" else f"  [{row['status']}]"
        print(f"  {row['name']:<22} {row['description']}{status}")
    return 0
