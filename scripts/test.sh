#!/usr/bin/env bash
# The test command: set up .venv if needed, then ruff (lint + format check), the import-layer contract
# (import-linter) and the test suite: everything by default (about 9 minutes on 2 CPU cores), or with
# --fast the tests not marked slow (about 1.5 minutes, for development). Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=()
for a in "$@"; do
  if [ "$a" = "--fast" ]; then args+=(-m "not slow"); else args+=("$a"); fi
done
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-logo
.venv/bin/python -m pytest -q "${args[@]}"
