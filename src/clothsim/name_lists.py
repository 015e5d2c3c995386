"""Parsing of the name lists users type (``NAME=PATH`` pairs, comma-separated names), shared by the CLI and
the Python API."""

from __future__ import annotations

from collections.abc import Iterable

from clothsim.errors import UsageError


def parse_name_paths(entries: Iterable[str] | None, option: str = "--weights") -> dict[str, str]:
    """``["vgg16=PATH", "a=P1,b=P2"]`` -> ``{"vgg16": "PATH", "a": "P1", "b": "P2"}``.

    Each entry may hold several comma-separated ``NAME=PATH`` pairs; a later pair for the same name wins.

    Raises:
        UsageError: an entry is not ``NAME=PATH``; the message names ``option``.
    """
    mapping: dict[str, str] = {}
    for value in entries or []:
        for entry in str(value).split(","):
            name, sep, path = entry.strip().partition("=")
            if not sep or not name.strip() or not path.strip():
                raise UsageError(f"{option} must be NAME=PATH (e.g. vgg16=weights/vgg16.pth), got {entry!r}")
            mapping[name.strip()] = path.strip()
    return mapping


def split_names(text: str) -> list[str]:
    """``"vgg16, efficientnet_lite0"`` -> ``["vgg16", "efficientnet_lite0"]``."""
    return [name.strip() for name in text.split(",") if name.strip()]
