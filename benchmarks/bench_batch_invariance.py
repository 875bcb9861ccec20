"""How far a seeded request's output depends on its batch peers, per draw and dtype.

8 seeded requests at temperature 1 run alone (max_batch 1) and together (one batch of 8, keys
padded to the longest); a row counts the outputs that differ and the first position where
they do. Draws: braid's `sample` (an exponential race: argmax p_v / E_v with E_v ~ Exp(1) from
the request's generator) and the inverse-CDF draw it replaced (u against the cumulative sum in
token-id order), swapped in for the run. Not a timing benchmark.

    .venv/bin/python benchmarks/bench_batch_invariance.py [--model NAME] [--tokens 32]

Writes benchmarks/results/batch_invariance.md (or --out).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import braid.methods.autoregressive as ar
from braid import LLM, SamplingParams
from braid.sampling import sample as exponential_race

RESULTS = Path(__file__).parent / "results"
PROMPTS = [
    "def add(a, b):",
    "The capital of France is",
    "import numpy as np\n",
    "Once upon a time, in a small village",
    "SELECT name FROM users WHERE",
    "The three laws of motion are",
    "class Stack:\n    def __init__(self):",
    "In 1905, Albert Einstein published",
]


def inverse_cdf(probs: torch.Tensor, generator: torch.Generator) -> int:
    u = torch.rand((), generator=generator, dtype=torch.float64)
    cdf = probs.double().cumsum(0)
    return min(int(torch.searchsorted(cdf, u * cdf[-1], right=True)), probs.shape[0] - 1)


def run(llm: LLM, draw, tokens: int) -> tuple[int, list[int]]:
    ar.sample = draw  # the draw `ar` uses for sampled rows
    outs = {}
    for batch in (1, len(PROMPTS)):
        llm.max_batch = batch
        params = [
            SamplingParams(max_tokens=tokens, temperature=1.0, seed=100 + i, ignore_eos=True)
            for i in range(len(PROMPTS))
        ]
        outs[batch] = [o.token_ids for o in llm.generate(PROMPTS, params)]
    first = []
    for a, b in zip(outs[1], outs[len(PROMPTS)]):
        if a != b:
            first.append(next(i for i, (x, y) in enumerate(zip(a, b)) if x != y))
    return len(first), first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="default: the default model")
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--out", default="batch_invariance.md", help="file under benchmarks/results")
    args = p.parse_args()
    rows = [
        "# Seeded outputs alone vs in a batch of 8 (temperature 1, method ar)",
        "",
        f"model {args.model or 'SmolLM2-135M-Instruct (default)'}, {args.tokens} tokens each.",
        "",
        "| dtype | draw | outputs that differ (of 8) | first differing positions |",
        "|---|---|---|---|",
    ]
    for dtype in args.dtypes.split(","):
        llm = LLM(args.model, dtype=dtype)
        for name, draw in (("inverse CDF", inverse_cdf), ("exponential race", exponential_race)):
            n, first = run(llm, draw, args.tokens)
            rows.append(f"| {dtype} | {name} | {n} | {sorted(first) or '-'} |")
            print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
