#!/usr/bin/env bash
# Set up clothsim on a fresh Debian/Ubuntu machine: system packages, a virtual environment, the package.
# Idempotent: run it again and it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# Debian packages: Fashion-MNIST (MIT) for the reader tests, Chromium + ChromeDriver for the browser test.
if command -v apt-get >/dev/null 2>&1 && [ "${CLOTHSIM_SKIP_APT:-0}" != "1" ]; then
  missing=()
  for pkg in dataset-fashion-mnist chromium chromium-driver; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned, so that nothing that depends on it pulls another build.
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[web,test]"
echo "clothsim is set up in $VENV"
