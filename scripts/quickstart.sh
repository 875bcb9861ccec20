#!/usr/bin/env bash
# Set up, then ask the default model (SmolLM2-135M-Instruct) a question and stream its answer.
# Extra arguments go to `braid generate`; `.venv/bin/braid chat` talks with it interactively.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ $# -eq 0 ]; then
  set -- --chat --prompt "What is the capital of France? Answer in one sentence." --stats
fi
exec .venv/bin/braid generate "$@"
