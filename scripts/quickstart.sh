#!/usr/bin/env bash
# Set up, then generate from the bundled default model. Extra arguments go to `braid generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ $# -eq 0 ]; then
  set -- --prompt "def fibonacci(n):" --max-tokens 96 --seed 0 --stats
fi
exec .venv/bin/braid generate "$@"
