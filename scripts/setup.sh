#!/usr/bin/env bash
# Shared first step of scripts/demo.sh and scripts/test.sh: create .venv with the pinned versions
# (constraints.txt) and install fcnkit with its dev extras. Installs only when constraints.txt or
# pyproject.toml changed since the last install (a stamp in .venv), so a second run costs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=$(cat constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.fcnkit-installed 2>/dev/null)" != "$stamp" ]; then
  echo "installing fcnkit and its pinned dependencies into .venv (a few minutes the first time) ..."
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  # fails loudly if the install did not work
  .venv/bin/python -c "import torch, torchvision, fcnkit; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, fcnkit {fcnkit.__version__}')"
  echo "$stamp" > .venv/.fcnkit-installed
fi
