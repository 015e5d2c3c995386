#!/usr/bin/env bash
# Set up everything the tests use, on a Debian/Ubuntu machine: the core (scripts/setup.sh), then the
# torch extra, FAISS, Milvus Lite, Ray and the test tools, and two Debian packages: Fashion-MNIST (MIT)
# for the reader tests, Chromium + ChromeDriver for the browser test (sudo when not root).
#   ./scripts/setup-tests.sh && .venv/bin/python -m pytest
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}

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

./scripts/setup.sh
# torch first, pinned, so that nothing that depends on it pulls another build.
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[test]"
echo "clothsim and its test tools are set up in $VENV"
