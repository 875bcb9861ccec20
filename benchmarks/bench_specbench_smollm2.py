"""Issue 15's benchmark: every multi-token method on the default model (SmolLM2-135M-Instruct)
over Spec-Bench's six subtasks, first turns under the chat template, with the peers users
compare against, in one run per setting (ratios against `ar` are the figures to read).

    .venv/bin/python benchmarks/bench_specbench_smollm2.py [--smoke] [extra braid bench flags]

Writes benchmarks/results/specbench_smollm2_b{batch}_t{T}.{md,json,png}, one file per batch
and temperature. Batch 1 also times transformers' prompt lookup (`--peer
transformers-lookup`, the peer of `ngram`); transformers' assisted generation with the shipped
draft is `--peer transformers-assisted` (add it as an extra flag: it doubles the run time here).
The model runs `--dtype bf16` (the GGUF dequantized: the issue's setting, and what transformers
runs too). --smoke: one prompt per subtask and a few tokens, into /tmp (checks the script runs).
"""

import sys
import tempfile
from pathlib import Path

from braid.cli import main

RESULTS = Path(__file__).parent / "results"
METHODS = "ar,spec,block,mtad,mtad-tree,heads,heads-tree,ngram"


def run(batch: int, temperature: float, out: Path, extra: list[str], smoke: bool) -> int:
    per_subtask = 2 if batch == 1 else batch
    args = ["bench", "--model", "smollm2", "--prompts", "specbench", "--chat", "--plot"]
    args += ["--prompt-len", "4096", "--dtype", "bf16", "--threads", "2"]
    args += ["--batch", str(batch), "--temperature", str(temperature), "--out", str(out)]
    if not any(a.startswith("--methods") for a in extra):
        args += ["--methods", METHODS]
    if not any(a.startswith("--peer") for a in extra):
        args += ["--peer", "transformers-lookup" if batch == 1 else "transformers"]
    if smoke:
        args += ["--prompt-count", "1", "--new-tokens", "8", "--runs", "1", "--warmup", "0"]
    else:
        args += ["--prompt-count", str(per_subtask), "--new-tokens", "96"]
        args += ["--runs", "1", "--warmup", "1"]
    return main(args + extra)


if __name__ == "__main__":
    extra = sys.argv[1:]
    smoke = "--smoke" in extra
    extra = [a for a in extra if a != "--smoke"]
    batches = [1, 8]
    if "--batch" in extra:
        i = extra.index("--batch")
        batches = [int(b) for b in extra[i + 1].split(",")]
        del extra[i : i + 2]
    temperatures = [0.0]
    if "--temperatures" in extra:
        i = extra.index("--temperatures")
        temperatures = [float(t) for t in extra[i + 1].split(",")]
        del extra[i : i + 2]
    where = Path(tempfile.mkdtemp()) if smoke else RESULTS
    for t in temperatures:
        for b in batches:
            name = f"specbench_smollm2_b{b}_t{t:g}.md"
            code = run(b, t, where / name, extra, smoke)
            if code:
                sys.exit(code)
    print(f"tables in {where}")
