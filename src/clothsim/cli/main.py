"""Entry point of the ``clothsim`` command.

Each sub-command lives in its own ``cmd_<name>.py`` module exposing ``add_parser(subparsers)`` and
``run(args) -> int``; this module only builds the parser, configures logging and maps errors to
exit codes (0 success, 1 failure, 2 bad usage, 130 interrupted). Command modules import nothing heavy
at the top (torch, matplotlib, a plug-in): their ``run`` imports its work, so parsing, ``--help`` and
usage errors are instant.

Only errors raised on purpose become a one-line message: :class:`~clothsim.errors.UsageError` (exit 2),
any other :class:`~clothsim.errors.ClothsimError` and file-system errors naming a path (exit 1).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import warnings
from typing import Sequence

from clothsim import __version__
from clothsim.errors import ClothsimError, UsageError

COMMANDS = ("encoders", "plugins", "index", "search", "duplicates", "demo", "data", "serve", "train_siamese",
            "similarity", "evaluate", "fit_ensemble", "train", "verify")
# What a user's mistake about files looks like; a message naming the path is enough.
_FILE_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)

EPILOG = """examples:
  clothsim demo                                         # the whole pipeline on a bundled sample
  clothsim index photos/train --encoder vgg16 --weights vgg16_features_imagenet.pth --out catalog/
  clothsim search photo.jpg --index catalog/ -k 5 --grid result.png
  clothsim encoders                                     # what can encode images
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clothsim",
        description="Visual clothing similarity: the top-k most similar catalogue items for a photo.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clothsim {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors; no progress bars")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"clothsim.cli.cmd_{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(handler=module.run)
    return parser


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose + 1, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging(args.verbose, args.quiet)
    # Pillow warns of images above its own limit before clothsim refuses them (a lower limit, named in
    # the error): the warning's text would only repeat that error in raw form.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    # SIGTERM (a service manager, `kill`) cleans up as Ctrl-C does: transactions roll back, a partial
    # rebuild is removed; the index stays as it was or as far as its last checkpoint.
    previous = _on_sigterm(_interrupt)
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"clothsim {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ClothsimError, *_FILE_ERRORS) as exc:
        print(f"clothsim {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"clothsim {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        _on_sigterm(previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _on_sigterm(handler: object) -> object:
    """Install ``handler`` for SIGTERM where this thread may (the main thread); returns the one before."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
