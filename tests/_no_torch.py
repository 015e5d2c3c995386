"""Running clothsim where ``import torch`` fails: ``torch`` and ``torchvision`` set to ``None`` in
``sys.modules`` of a fresh interpreter, so that any import of them raises ImportError."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# ``python -c NO_TORCH clothsim ARGS...`` runs the CLI; ``python -c NO_TORCH SCRIPT ARGS...`` runs a script.
NO_TORCH = """
import runpy, sys
for name in ("torch", "torchvision"):
    sys.modules[name] = None  # any import of them now raises ImportError
sys.argv = sys.argv[1:]
if sys.argv[0] == "clothsim":
    from clothsim.cli.main import main
    sys.exit(main(sys.argv[1:]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def no_torch(*argv: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``clothsim ARGS`` or a script in a fresh interpreter that cannot import torch."""
    return subprocess.run([sys.executable, "-c", NO_TORCH, *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(SRC)))
