"""Options shared by several sub-commands, declared once.

Nothing here imports torch or a plug-in: choices come from the entry-point names, which are read
without importing anything, so ``--help`` and usage errors stay instant.
"""

from __future__ import annotations

import argparse

from clothsim.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_DECODE_WORKERS,
    DEFAULT_DEVICE,
    DEFAULT_ENCODER,
    DEFAULT_ENGINE,
    DEFAULT_INDEX_BACKEND,
    DEFAULT_RUNTIME,
)
from clothsim.plugins import ENGINES, INDEX_BACKENDS, READERS, RUNTIMES, declared_names


def add_encoder_options(parser: argparse.ArgumentParser, default: str | None = DEFAULT_ENCODER) -> None:
    parser.add_argument("--encoder", default=default,
                        help=f"encoder name (see `clothsim encoders`; default {default})")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="local state-dict file instead of the official pretrained weights; "
                             "'random' for random initialisation")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=f"torch device (default {DEFAULT_DEVICE})")
    add_runtime_option(parser)


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", default=DEFAULT_RUNTIME, choices=["auto", *declared_names(RUNTIMES)],
                        help=f"what runs the network (default {DEFAULT_RUNTIME}: onnx where it can run the "
                             "encoder, else torch; every runtime gives the same vectors)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="compute threads of the runtime (default: every core this process may use)")


def add_precision_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                        help="int8: the network quantized by ONNX Runtime, calibrated on photos of this "
                             "catalogue (faster; offered for the encoders where it keeps P@5, see docs/runtimes.md)")
    parser.add_argument("--calibration-images", type=positive_int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                        help="photos of the catalogue (a seeded sample) that calibrate int8 "
                             f"(default {DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--calibration-method", choices=["minmax", "percentile", "entropy"],
                        default=DEFAULT_CALIBRATION_METHOD,
                        help=f"how int8 ranges are chosen from the calibration photos (default {DEFAULT_CALIBRATION_METHOD})")


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default=DEFAULT_INDEX_BACKEND, choices=declared_names(INDEX_BACKENDS),
                        help=f"index backend (default {DEFAULT_INDEX_BACKEND}); recorded in the index folder")
    add_backend_options_flag(parser, "an option of the backend (repeatable), recorded with it, e.g. M=32, "
                                     "efSearch=128, nlist=1024, uri=http://HOST:19530 (see docs/backends.md)")


def add_backend_options_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """``--backend-option KEY=VALUE`` (repeatable); parsed by ``clothsim.index.base.parse_option_pairs``."""
    parser.add_argument("--backend-option", action="append", default=None, metavar="KEY=VALUE", help=help)


def add_extraction_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        help=f"images per forward pass (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--workers", type=int, default=DEFAULT_DECODE_WORKERS,
                        help=f"processes decoding images in parallel with inference (default {DEFAULT_DECODE_WORKERS})")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="auto", choices=["auto", *declared_names(READERS)],
                        help="catalogue format (default: detected)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", default=DEFAULT_ENGINE, choices=declared_names(ENGINES),
                        help="what decodes and encodes: local (this machine, default) or ray (a Ray cluster); "
                             "the index is the same")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="with --engine ray: 'auto' (the cluster this machine belongs to), "
                             "ray://HOST:10001, or nothing to start Ray on this machine")
    parser.add_argument("--actors", type=positive_int, default=None,
                        help="with --engine ray: most encoding actors (default: half the cluster's CPUs)")
