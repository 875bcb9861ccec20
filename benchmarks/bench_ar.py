"""Issue 2's benchmark: braid AR against transformers on ~30M and ~120M random Llama configs
and the bundled target, batch 1 and 8, bf16, all cores. Writes benchmarks/results/ar_cpu.md.

    .venv/bin/python benchmarks/bench_ar.py
"""

import sys
from pathlib import Path

from braid.cli import main

ROOT = Path(__file__).parents[1]
OUT = ROOT / "benchmarks" / "results" / "ar_cpu.md"

if __name__ == "__main__":
    configs = ["llama-30m", "llama-120m"]
    if (ROOT / "src/braid/assets/models/code-23m/config.json").exists():
        configs.append("bundled")
    args = ["bench", "--methods", "ar", "--peer", "transformers", "--batch", "1,8"]
    args += ["--prompt-len", "64", "--new-tokens", "256", "--runs", "3", "--dtype", "bf16"]
    for c in configs:
        args += ["--config", c]
    sys.exit(main(args + ["--out", str(OUT), *sys.argv[1:]]))
