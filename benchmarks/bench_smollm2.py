"""braid against transformers on the default model, SmolLM2-135M-Instruct (its Q4_1 GGUF
dequantized to bf16: both engines run the same weights, in one process), greedy, batch 1, 8 and
32, with the share of the memory-bandwidth roofline. Writes benchmarks/results/smollm2_cpu.md.

    .venv/bin/python benchmarks/bench_smollm2.py [extra braid bench flags]
"""

import sys
from pathlib import Path

from braid.cli import main

OUT = Path(__file__).parent / "results" / "smollm2_cpu.md"

if __name__ == "__main__":
    args = ["bench", "--model", "smollm2", "--methods", "ar", "--peer", "transformers"]
    args += ["--batch", "1,8,32", "--prompt-len", "64", "--new-tokens", "128", "--runs", "3"]
    args += ["--dtype", "bf16", "--threads", "2", "--out", str(OUT)]
    sys.exit(main(args + sys.argv[1:]))
