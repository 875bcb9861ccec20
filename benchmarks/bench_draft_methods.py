"""Issue 4's benchmark matrix: ar, spec, block, mtad, mtad-tree and transformers' assisted
generation on the bundled target/draft pair; validation-text and Spec-Bench prompts,
temperature 0 and 1, batch 1 and 8. Writes benchmarks/results/draft_{val,specbench}_t{0,1}.*

    .venv/bin/python benchmarks/bench_draft_methods.py                 # the whole matrix
    .venv/bin/python benchmarks/bench_draft_methods.py --threads 1     # extra flags pass on
"""

import sys
from pathlib import Path

from braid.cli import main

RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"
COMMON = [
    "bench",
    "--config",
    "bundled",
    "--methods",
    "ar,spec,block,mtad,mtad-tree",
    "--peer",
    "transformers-assisted",
    "--batch",
    "1,8",
    "--prompt-len",
    "64",
    "--new-tokens",
    "128",
    "--runs",
    "2",
    "--warmup",
    "1",
    "--plot",
]
SETS = {
    "val": ["--prompts", "val", "--prompt-count", "8"],
    "specbench": ["--prompts", "specbench", "--prompt-count", "3"],
}

if __name__ == "__main__":
    for name, prompts in SETS.items():
        for t in (0, 1):
            args = COMMON + prompts + ["--temperature", str(t)]
            if t == 1 and name == "val":
                args += ["--quality", "--quality-seeds", "512", "--quality-tokens", "1"]
            out = RESULTS / f"draft_{name}_t{t}.md"
            code = main(args + ["--out", str(out), *sys.argv[1:]])
            if code:
                sys.exit(code)
