#!/usr/bin/env bash
# Set up with the dev extras, lint, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest "$@"
