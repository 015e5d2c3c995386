#!/usr/bin/env bash
# Set up clothsim's core and its web server in a virtual environment: no root, no system packages, no
# torch. Idempotent: run it again and it only installs what is missing.
#   ./scripts/setup.sh && .venv/bin/clothsim demo
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[web]"
echo "clothsim is set up in $VENV"
