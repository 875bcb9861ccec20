"""Issue 5's benchmark: `ar` against CP-heads self-speculative decoding (`heads`) on the bundled
target, in the same run, on validation-text prompts and Spec-Bench first turns, temperature 0
and 1. Prints a markdown table and writes benchmarks/results/heads_cpu.{md,json,png}.

    .venv/bin/python benchmarks/bench_heads.py                      # every shipped heads dir
    .venv/bin/python benchmarks/bench_heads.py --heads DIR --heads DIR2 --count 4 --runs 1

Per (prompt set, temperature): each contender's warm-up, then --runs rounds in which every
contender runs all prompts one request at a time (batch 1), interleaved; tok/s is the median
over runs of generated tokens / seconds; tokens per pass and acceptance are summed over the
timed runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from braid import LLM, MethodConfig, SamplingParams
from braid.bench.prompts import validation
from braid.heads.io import BUNDLED
from braid.llm import bundled_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "heads_cpu"


def specbench_prompts(llm: LLM, count: int, length: int) -> list[list[int]]:
    """The first turns of Spec-Bench, round-robin over subtasks, cut to their last tokens."""
    from braid.bench.prompts import specbench

    groups = list(specbench(None, count).values())
    texts = [g[i] for i in range(count) for g in groups if i < len(g)][:count]
    return [llm.tokenizer.encode(t)[-length:] for t in texts]


def run_once(
    llm: LLM, prompts, method: str, temperature: float, new_tokens: int, gamma: int = 4
) -> dict:
    params = [
        SamplingParams(max_tokens=new_tokens, temperature=temperature, seed=i, ignore_eos=True)
        for i in range(len(prompts))
    ]
    start = time.perf_counter()
    config = MethodConfig(method, gamma=gamma)
    outs = [llm.generate([p], params[i], method=config)[0] for i, p in enumerate(prompts)]
    seconds = time.perf_counter() - start
    s = [o.stats for o in outs]
    return {
        "seconds": seconds,
        "tokens": sum(x.generated_tokens for x in s),
        "passes": sum(x.passes for x in s),
        "drafted": sum(x.draft_tokens for x in s),
        "accepted": sum(x.accepted_tokens for x in s),
    }


def measure(contenders, prompts, temperature, args) -> list[dict]:
    """Every contender's warm-up, then --runs rounds of one run each, interleaved, so that a
    change in machine load hits all contenders alike."""

    def go(c, ps):
        return run_once(c["llm"], ps, c["method"], temperature, args.new_tokens, c["gamma"])

    for c in contenders:
        for _ in range(args.warmup):
            go(c, prompts[:2])
    runs: list[list[dict]] = [[] for _ in contenders]
    for _ in range(args.runs):
        for i, c in enumerate(contenders):
            runs[i].append(go(c, prompts))
    out = []
    for rs in runs:
        total = {k: sum(r[k] for r in rs) for k in ("tokens", "passes", "drafted", "accepted")}
        out.append(
            {
                "tok_s": statistics.median(r["tokens"] / r["seconds"] for r in rs),
                "tokens_per_pass": total["tokens"] / total["passes"],
                "acceptance": total["accepted"] / total["drafted"] if total["drafted"] else None,
            }
        )
    return out


def heads_contenders(path: Path, llm: LLM, trees: list[int]) -> list[dict]:
    """`heads` (the chain of n - 1 drafts) and `heads-tree` with each node count."""
    cfg = json.loads((path / "heads.json").read_text())
    training = cfg.get("training", {})
    targets = training.get("targets", "data")
    note = "" if targets == "data" else f", {targets} targets"
    if targets == "generated":
        note = f", generated T={training.get('gen_temperatures', '0')}"
    name = f"n{cfg['n']} r{cfg['rank']} ({training.get('steps', '?')} steps{note})"
    common = {"llm": llm, "val_loss": cfg.get("val_loss")}
    return [{"label": f"heads {name}", "method": "heads", "gamma": 4, **common}] + [
        {"label": f"heads-tree {k} {name}", "method": "heads-tree", "gamma": k, **common}
        for k in trees
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", action="append", help="heads dir (repeatable; default: shipped)")
    p.add_argument("--prompts", default="val,specbench", help="val, specbench or both")
    p.add_argument("--count", type=int, default=16, help="prompts per set")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--temperatures", default="0,1")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument(
        "--tree", default="", help="heads-tree node counts to add per heads dir, e.g. 4,8"
    )
    p.add_argument("--out", default=str(OUT), help="output path without extension")
    args = p.parse_args(argv)
    heads_dirs = (
        [Path(h) for h in args.heads]
        if args.heads
        else sorted(d for d in BUNDLED.glob("*") if (d / "heads.json").exists())
    )
    if not heads_dirs:
        p.error("no heads given and none shipped under " + str(BUNDLED))
    model = bundled_model()
    base = LLM(model, dtype=args.dtype, threads=args.threads, max_batch=1)
    trees = [int(k) for k in args.tree.split(",") if k]
    contenders = [{"label": "ar", "method": "ar", "gamma": 4, "llm": base, "val_loss": None}]
    for h in heads_dirs:
        llm = LLM(model, dtype=args.dtype, threads=args.threads, max_batch=1, heads=h)
        contenders += heads_contenders(h, llm, trees)
    sets = {}
    for name in args.prompts.split(","):
        if name == "val":
            (sets[name],) = validation(
                base.tokenizer, args.count, args.prompt_len, args.new_tokens
            ).values()
        elif name == "specbench":
            sets[name] = specbench_prompts(base, args.count, args.prompt_len)
        else:
            p.error(f"unknown prompt set {name!r}: use val and/or specbench")

    rows = []
    for set_name, prompts in sets.items():
        for temp in (float(t) for t in args.temperatures.split(",")):
            measured = measure(contenders, prompts, temp, args)
            ar_speed = measured[0]["tok_s"]  # contenders[0] is ar
            for c, m in zip(contenders, measured):
                row = {
                    "prompts": set_name,
                    "temperature": temp,
                    "contender": c["label"],
                    "joint_val_loss": c["val_loss"],
                    **m,
                    "speedup": m["tok_s"] / ar_speed,
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    write_report(rows, args, Path(args.out))
    return 0


def write_report(rows: list[dict], args, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = (
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    head = [
        f"Machine: {machine}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Settings: bundled target, dtype {args.dtype}, batch 1, {args.count} prompts per set of "
        f"{args.prompt_len} tokens, {args.new_tokens} new tokens, median of {args.runs} runs "
        f"after {args.warmup} warm-up.",
        "Command: `python benchmarks/bench_heads.py " + " ".join(sys.argv[1:]) + "`",
        "",
        "| prompts | T | contender | joint val loss | tok/s | × ar | tok/pass | accept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        loss = f"{r['joint_val_loss']:.3f}" if r["joint_val_loss"] is not None else "–"
        acc = f"{r['acceptance']:.2f}" if r["acceptance"] is not None else "–"
        head.append(
            f"| {r['prompts']} | {r['temperature']:g} | {r['contender']} | {loss} | "
            f"{r['tok_s']:.1f} | {r['speedup']:.2f} | {r['tokens_per_pass']:.2f} | {acc} |"
        )
    text = "\n".join(head) + "\n"
    print(text)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps({"settings": vars(args), "rows": rows}, indent=2)
    )
    plot(rows, out.with_suffix(".png"))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["prompts"], r["temperature"]) for r in rows})
    names = [c for c in dict.fromkeys(r["contender"] for r in rows) if c != "ar"]
    fig, ax = plt.subplots(figsize=(2 + 2 * len(groups), 4))
    width = 0.8 / max(1, len(names))
    colors = plt.get_cmap("tab20" if len(names) > 10 else "tab10").colors
    for j, name in enumerate(names):
        values = [
            next(
                (
                    r["speedup"]
                    for r in rows
                    if (r["prompts"], r["temperature"]) == g and r["contender"] == name
                ),
                0.0,
            )
            for g in groups
        ]
        x = [i + j * width for i in range(len(groups))]
        ax.bar(x, values, width, label=name, color=colors[j % len(colors)])
    ax.axhline(1.0, color="gray", lw=1, ls="--")
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{p}, T={t:g}" for p, t in groups])
    ax.set_ylabel("tokens/s × ar")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    sys.exit(main())
