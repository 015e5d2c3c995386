"""Options shared by several sub-commands, declared once."""

from __future__ import annotations

import argparse

from clothsim.encoders.registry import DEFAULT_ENCODER


def add_encoder_options(parser: argparse.ArgumentParser, default: str | None = DEFAULT_ENCODER) -> None:
    parser.add_argument("--encoder", default=default,
                        help=f"encoder name (see `clothsim encoders`; default {default})")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="local state-dict file instead of the official pretrained weights; "
                             "'random' for random initialisation")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def add_extraction_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes decoding images in parallel with inference (default 2)")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="auto",
                        choices=["auto", "folder", "csv", "deepfashion-category", "deepfashion-inshop",
                                 "fashion-mnist", "demo"],
                        help="catalogue format (default: detected)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
