#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. `.ci/run` calls exactly this.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_tests.sh || exit 1  # scripts/setup.sh, then what only the tests need
# The hygiene gate (configured in pyproject.toml): lint, formatting and types before any test runs.
.venv/bin/ruff check . || { echo "ruff check failed: fix the findings (ruff check . --fix handles the safe ones)" >&2; exit 1; }
.venv/bin/ruff format --check . || { echo "formatting differs: run .venv/bin/ruff format ." >&2; exit 1; }
.venv/bin/mypy || { echo "mypy found type errors" >&2; exit 1; }
.venv/bin/python -m pytest -q -ra --durations=15 "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose (an empty run proves nothing)" >&2
  exit 1
fi
exit "$status"
