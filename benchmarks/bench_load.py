"""Load time of the default model (SmolLM2-135M-Instruct, Q4_1 GGUF): braid's first load (GGUF
-> cached model directory), its cached load, and transformers' own GGUF loading, each in a fresh
process so nothing is shared. Writes benchmarks/results/load_cpu.md (and .json).

    .venv/bin/python benchmarks/bench_load.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from braid.bench.machine import describe
from braid.model.registry import DEFAULT, default_model_file

OUT = Path(__file__).parent / "results" / "load_cpu.md"

BRAID = """
import time, torch; t = time.perf_counter()
from braid import LLM
llm = LLM(dtype="{dtype}", threads=2)
print(time.perf_counter() - t)
"""
TRANSFORMERS = """
import time, torch; t = time.perf_counter()
import transformers as tf
p = "{path}"
m = tf.AutoModelForCausalLM.from_pretrained(p.rsplit("/", 1)[0], gguf_file=p.rsplit("/", 1)[1],
                                            dtype=torch.{dtype})
tok = tf.AutoTokenizer.from_pretrained(p.rsplit("/", 1)[0], gguf_file=p.rsplit("/", 1)[1])
print(time.perf_counter() - t)
"""


def timed(code: str, env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import os

    path = default_model_file()
    rows = []
    for dtype, torch_dtype in (("bf16", "bfloat16"), ("fp32", "float32")):
        first, cached = [], []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, BRAID_CACHE_DIR=cache)
                first.append(timed(BRAID.format(dtype=dtype), env))
                cached.append(timed(BRAID.format(dtype=dtype), env))
        env = dict(os.environ, TRANSFORMERS_VERBOSITY="error")
        code = TRANSFORMERS.format(path=path, dtype=torch_dtype)
        hf = [timed(code, env) for _ in range(args.runs)]
        for label, ts in (("braid, first load", first), ("braid, cached", cached),
                          ("transformers (GGUF)", hf)):  # fmt: skip
            rows.append({"dtype": dtype, "loader": label, "seconds": statistics.median(ts),
                         "runs": ts})  # fmt: skip
    machine = describe(2)
    lines = [
        f"# Load time of {DEFAULT.name} ({path.name})",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, 2 threads, torch {machine['torch']}, "
        f"{machine['date']}; median of {args.runs} fresh processes each (imports included).",
        "Command: `.venv/bin/python benchmarks/bench_load.py`",
        "",
        "| dtype | loader | seconds | runs |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['dtype']} | {r['loader']} | {r['seconds']:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in r['runs'])} |"
        for r in rows
    ]
    OUT.write_text("\n".join(lines) + "\n")
    OUT.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
