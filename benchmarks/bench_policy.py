"""The batch-aware draft-length policy (gamma "auto") against a fixed gamma of 4, per method and
batch size, each run timing `ar` beside the methods (the tables' "vs ar" column is the ratio
that matters: the policy's aim is never below ar and above the fixed gamma).

Writes benchmarks/results/policy_auto.md and policy_gamma4.md (with .json beside them).

    .venv/bin/python benchmarks/bench_policy.py [--smoke] [extra braid bench flags]

--smoke: tiny sizes and /tmp outputs, to check the script runs (not for published numbers).
Extra flags go to both runs, e.g. `--model smollm2 --methods ar,ngram,ngram-block` for the
default model (it has no shipped draft or heads yet).
"""

import sys
import tempfile
from pathlib import Path

from braid.cli import main

RESULTS = Path(__file__).parent / "results"
METHODS = "ar,spec,block,mtad,heads,heads-block,ngram,ngram-block"


def run(gamma: str, out: Path, extra: list[str], smoke: bool) -> int:
    args = ["bench", "--gamma", gamma, "--peer", "none", "--out", str(out)]
    if not any(a.startswith("--methods") for a in extra):
        args += ["--methods", METHODS]
    if smoke:
        args += ["--batch", "1,2", "--prompts", "val", "--prompt-count", "2", "--prompt-len", "32"]
        args += ["--new-tokens", "8", "--runs", "1", "--warmup", "0", "--threads", "1"]
    else:
        args += ["--batch", "1,8,32", "--prompts", "val", "--prompt-count", "32"]
        args += ["--prompt-len", "128", "--new-tokens", "128", "--runs", "3"]
    return main(args + extra)


if __name__ == "__main__":
    extra = sys.argv[1:]
    smoke = "--smoke" in extra
    extra = [a for a in extra if a != "--smoke"]
    where = Path(tempfile.mkdtemp()) if smoke else RESULTS
    for gamma, name in (("auto", "policy_auto.md"), ("4", "policy_gamma4.md")):
        code = run(gamma, where / name, extra, smoke)
        if code:
            sys.exit(code)
    print(f"tables in {where}")
