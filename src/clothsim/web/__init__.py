"""A web page and REST API for similarity search (needs the ``web`` extra: FastAPI and uvicorn).

``create_app(index)`` builds the application; ``clothsim serve --index DIR`` runs it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]

INSTALL_HINT = "the web server needs FastAPI and uvicorn: pip install 'clothsim[web]'"


def __getattr__(name: str) -> Any:
    # Imported on first use so `import clothsim.web` alone never needs the optional packages.
    if name == "create_app":
        try:
            from clothsim.web.app import create_app
        except ImportError as exc:
            raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
