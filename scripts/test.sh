#!/usr/bin/env bash
# The tests: set up if needed, then lint, type-check and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check edgebert tests benchmarks
.venv/bin/ruff format --check edgebert tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
