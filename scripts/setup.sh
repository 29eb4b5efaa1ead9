#!/usr/bin/env bash
# Create .venv with the pinned versions (constraints.txt), install fcnkit with its dev extras, then run the
# package's main job: list the models and run one forward pass. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, torchvision, fcnkit; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, fcnkit {fcnkit.__version__}')"
if [ "${FCNKIT_SETUP_ONLY:-0}" != "1" ]; then
  .venv/bin/fcnkit models --params
  .venv/bin/fcnkit forward fcn8s_vgg16 --size 375x500
fi
