"""The user's folders clothsim keeps: the cache folder (converted datasets, exported ONNX models, feature maps)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$CLOTHSIM_CACHE``, else ``$XDG_CACHE_HOME/clothsim``, else ``~/.cache/clothsim``."""
    if os.environ.get("CLOTHSIM_CACHE"):
        return Path(os.environ["CLOTHSIM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clothsim"
