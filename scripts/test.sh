#!/usr/bin/env bash
# The test command: lint, format check, then the test suite (a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
