#!/usr/bin/env bash
# The test command: set up .venv if needed, then ruff (lint + format check), the import-layer contract
# (import-linter), the documentation build and the test suite: everything by default (about 7.5 minutes on 2 CPU
# cores), or with --fast the tests not marked slow (under 2 minutes, for development). Other arguments go to pytest.
# setup.sh installs every optional package the tests use, so a test skipped for a missing one fails here
# (FCNKIT_REQUIRE_ALL=1, see tests/conftest.py; FCNKIT_REQUIRE_ALL=0 allows such skips). Every test has 5 minutes
# (pytest-timeout, pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FCNKIT_REQUIRE_ALL=${FCNKIT_REQUIRE_ALL:-1}
args=()
for a in "$@"; do
  if [ "$a" = "--fast" ]; then args+=(-m "not slow"); else args+=("$a"); fi
done
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-logo
# The documentation site (mkdocs.yml): a broken link, a missing page or an API reference that does not resolve fails
# here (--strict). Built into a temporary folder; `mkdocs serve` shows it while editing.
site=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"
# Temporary files in memory when /dev/shm has room: tests write checkpoints of up to 0.5 GB with fsync, which
# costs seconds each on a disk (a passing test's files go when it ends, see tmp_path_retention_policy).
if [ -d /dev/shm ] && [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 8000000 ]; then
  basetemp=$(mktemp -d /dev/shm/fcnkit-tests.XXXXXX)
  trap 'rm -rf "$basetemp"' EXIT
  args+=(--basetemp "$basetemp/t")
fi
.venv/bin/python -m pytest -q "${args[@]}"
