"""Issue 7's benchmark: the shipped Multiverse model on held-out task-family problems.

For problems from a seed the model never trained on, at temperature 0:

- (a) structure validity of `method="multiverse"` outputs: the grammar parses the text and the
  engine recorded no fallback (target >= 95%);
- (b) answer accuracy in `multiverse` mode against the same model decoding sequentially
  (`method="ar"`: every token sees every earlier one; target: within 2 points);
- (c) wall-clock time of `multiverse` against `ar` on the same prompts, timed in one run
  (warm-up, several runs, median), batch 1 (prompts one after another) and batch 8 (one call),
  with the degree of parallelism (generated tokens / critical path) and tokens per pass.

The prompt format is the training one (`braid.multiverse.train`): the problem text, then the
model writes `<Think> ... </Think>` and `Answer: N`. The knobs default to those in the model's
`braid_card.json`. Writes benchmarks/results/multiverse_model.{md,json,png}; `--update-card`
also puts the table into the model's card.

    .venv/bin/python benchmarks/bench_multiverse_model.py --update-card   # ~4 min here
    .venv/bin/python benchmarks/bench_multiverse_model.py --count 16 --runs 1 --out /tmp/q
    .venv/bin/python benchmarks/bench_multiverse_model.py --model /tmp/smol-fp32 \
        --adapter ADAPTER --family long --out benchmarks/results/multiverse_smollm2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from braid import LLM, SamplingParams
from braid.bench.machine import describe
from braid.multiverse.grammar import GrammarError, parse
from braid.multiverse.tags import tag_ids
from braid.multiverse.tasks import (
    LONG_PATHS,
    Knobs,
    check_answer,
    extract_answer,
    make_tasks,
    parallel_ceiling,
)
from braid.multiverse.train import write_card

ROOT = Path(__file__).parents[1]
MODEL = ROOT / "src" / "braid" / "assets" / "models" / "multiverse-arith"
OUT = ROOT / "benchmarks" / "results" / "multiverse_model"


def valid(out) -> bool:
    try:
        parse(out.text)
    except GrammarError:
        return False
    return out.stats.fallbacks == 0 and out.finish_reason == "stop"


def quality(llm: LLM, tasks, params: SamplingParams) -> dict:
    """Validity, accuracy and structure statistics of both modes on every held-out problem."""
    prompts = [t.prompt for t in tasks]
    res: dict = {}
    answers = {}
    for method in ("multiverse", "ar"):
        outs = llm.generate(prompts, params, method=method)
        answers[method] = [extract_answer(o.text) for o in outs]
        correct = [check_answer(o.text, t.answer) for o, t in zip(outs, tasks)]
        row = {
            "accuracy": sum(correct) / len(tasks),
            "correct": sum(correct),
            "finished": sum(o.finish_reason == "stop" for o in outs),
            "mean_generated_tokens": statistics.mean(o.stats.generated_tokens for o in outs),
        }
        if method == "multiverse":
            row.update(
                valid=sum(map(valid, outs)),
                validity=sum(map(valid, outs)) / len(tasks),
                forked=sum(o.stats.blocks > 0 for o in outs),
                fallbacks=sum(o.stats.fallbacks for o in outs),
                parallelism=statistics.mean(o.stats.parallelism for o in outs),
                mean_critical_path=statistics.mean(o.stats.critical_path for o in outs),
                warnings=sorted({w for o in outs for w in o.stats.warnings})[:10],
                examples=[o.text for o in outs[:2]],
            )
        res[method] = row
    same = sum(a == b for a, b in zip(answers["multiverse"], answers["ar"]))
    res["same_answer"] = same / len(tasks)
    # the reference solutions' own ceiling: all tokens / critical path
    tags = tag_ids(llm.tokenizer)
    encode = llm.tokenizer.encode
    ceilings = [parallel_ceiling(encode(t.multiverse, special=False), tags) for t in tasks]
    res["ceiling_median"] = statistics.median(ceilings)
    return res


def base_accuracy(model: str, tasks, params: SamplingParams, threads: int, dtype) -> dict:
    """The model before fine-tuning (no adapter), decoding sequentially: the problem as the
    plain training prompt and as one chat turn under its template."""
    llm = LLM(model, dtype=dtype, threads=threads, max_batch=8)
    plain = llm.generate([t.prompt for t in tasks], params)
    chat = llm.chat([[{"role": "user", "content": t.prompt}] for t in tasks], params)
    row = {"count": len(tasks)}
    for name, outs in (("plain", plain), ("chat", chat)):
        correct = sum(check_answer(o.text, t.answer) for o, t in zip(outs, tasks))
        row[name] = {"correct": correct, "accuracy": correct / len(tasks)}
    row["example"] = chat[0].text[:400]
    return row


def timed(llm: LLM, prompts: list[str], params, method: str, batch: int) -> tuple[float, list]:
    """Seconds to finish every prompt: batch 1 = one after another, else `batch` per call."""
    outs = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        outs += llm.generate(prompts[i : i + batch], params, method=method)
    return time.perf_counter() - t0, outs


def speed(llm: LLM, prompts: list[str], params, batches, runs: int, warmup: int) -> list[dict]:
    rows = []
    for batch in batches:
        times: dict[str, list[float]] = {"ar": [], "multiverse": []}
        last: dict[str, list] = {}
        for r in range(warmup + runs):
            for method in ("ar", "multiverse"):  # interleaved: drifts in machine load hit both
                s, outs = timed(llm, prompts, params, method, batch)
                if r >= warmup:
                    times[method].append(s)
                last[method] = outs
        row = {"batch": batch, "prompts": len(prompts), "runs": runs}
        for method in ("ar", "multiverse"):
            outs = last[method]
            tokens = sum(o.stats.generated_tokens for o in outs)
            passes = sum(o.stats.passes for o in outs)
            med = statistics.median(times[method])
            row[method] = {
                "seconds": med,
                "all_seconds": times[method],
                "tokens": tokens,
                "tok_s": tokens / med,
                "tokens_per_pass": tokens / passes if passes else 0.0,
                "parallelism": statistics.mean(o.stats.parallelism for o in outs),
            }
        row["speedup"] = row["ar"]["seconds"] / row["multiverse"]["seconds"]
        rows.append(row)
    return rows


def markdown(res: dict) -> str:
    q, s = res["quality"], res["speed"]
    mv, ar = q["multiverse"], q["ar"]
    n, m = res["count"], res["machine"]
    base = res.get("base")
    lines = [
        f"Held-out: {n} problems (seed {res['seed']}, knobs {res['knobs']}), temperature 0, "
        f"max_tokens {res['max_tokens']}. Machine: {m['cpu']}, {m['cores']} cores, "
        f"{res['threads']} thread(s), torch {m['torch']}, {res['dtype']}, {m['date']}. "
        f"Command: `{res['command']}`.",
        "",
        "| metric | multiverse | ar (sequential) | target |",
        "|---|---|---|---|",
        f"| structure valid (parses, no fallback) | {mv['validity']:.1%} ({mv['valid']}/{n}) | – "
        "| >= 98% |",
        f"| answer accuracy | {mv['accuracy']:.1%} ({mv['correct']}/{n}) | {ar['accuracy']:.1%} "
        f"({ar['correct']}/{n}) | within 2 points |",
        f"| same answer in both modes | {q['same_answer']:.1%} | | |",
        *(
            [
                f"| base model before fine-tuning, accuracy (ar; first {base['count']}: plain "
                f"prompt / chat turn) | – | {base['plain']['accuracy']:.1%} / "
                f"{base['chat']['accuracy']:.1%} | reported |"
            ]
            if base
            else []
        ),
        f"| outputs that forked | {mv['forked']}/{n} | – | |",
        f"| degree of parallelism (tokens / critical path) | {mv['parallelism']:.2f} | 1.00 | "
        f"ceiling of the reference solutions: {q.get('ceiling_median', 0):.2f} (median) |",
        f"| mean generated tokens | {mv['mean_generated_tokens']:.1f} | "
        f"{ar['mean_generated_tokens']:.1f} | |",
        "",
        f"Wall clock on the first {s[0]['prompts']} held-out prompts (median of {s[0]['runs']} "
        "runs after warm-up; ar and multiverse interleaved in one process):",
        "",
        "| batch | ar s | multiverse s | speedup | ar tok/s | multiverse tok/s | "
        "multiverse tokens/pass | parallelism |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in s:
        a, m = r["ar"], r["multiverse"]
        lines.append(
            f"| {r['batch']} | {a['seconds']:.2f} | {m['seconds']:.2f} | {r['speedup']:.2f}x | "
            f"{a['tok_s']:.0f} | {m['tok_s']:.0f} | {m['tokens_per_pass']:.2f} | "
            f"{m['parallelism']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    q = res["quality"]
    names = ["validity", "acc. multiverse", "acc. ar"]
    vals = [q["multiverse"]["validity"], q["multiverse"]["accuracy"], q["ar"]["accuracy"]]
    ax1.bar(names, [100 * v for v in vals], color=["tab:green", "tab:blue", "tab:gray"])
    ax1.axhline(95, ls="--", color="tab:green", lw=1)
    ax1.set_ylabel("% of held-out problems")
    ax1.set_ylim(0, 105)
    ax1.set_title(f"quality, {res['count']} held-out problems")
    for i, v in enumerate(vals):
        ax1.text(i, 100 * v + 1, f"{100 * v:.1f}", ha="center")
    s = res["speed"]
    x = range(len(s))
    w = 0.38
    ax2.bar([i - w / 2 for i in x], [r["ar"]["seconds"] for r in s], w, label="ar")
    ax2.bar([i + w / 2 for i in x], [r["multiverse"]["seconds"] for r in s], w, label="multiverse")
    for i, r in enumerate(s):
        ax2.text(
            i + w / 2, r["multiverse"]["seconds"], f"{r['speedup']:.2f}x", ha="center", va="bottom"
        )
    ax2.set_xticks(list(x), [f"batch {r['batch']}" for r in s])
    ax2.set_ylabel(f"seconds for {s[0]['prompts']} prompts")
    ax2.set_title("wall clock (median)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(MODEL))
    p.add_argument("--adapter", help="a peft adapter merged into --model (its card's knobs)")
    p.add_argument("--family", choices=["short", "long"], help="task family (default: card's)")
    p.add_argument("--count", type=int, default=2000, help="held-out problems for quality")
    p.add_argument("--seed", type=int, default=1000, help="held-out seed (training used 0)")
    p.add_argument("--knobs", help="task knobs JSON (default: the model card's)")
    p.add_argument("--max-tokens", type=int, default=440)
    p.add_argument("--speed-prompts", type=int, default=32, help="prompts timed per run")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default=None, help="bf16 | fp32 (default: braid's choice)")
    p.add_argument("--out", default=str(OUT), help="results prefix (.md, .json, .png)")
    p.add_argument("--update-card", action="store_true", help="add the table to the model card")
    p.add_argument(
        "--base-count",
        type=int,
        default=0,
        help="with --adapter: also score --model without it (ar) on this many problems",
    )
    args = p.parse_args()

    model = Path(args.adapter or args.model)  # whose card holds the training knobs
    card_path = model / "braid_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    knobs_json = args.knobs or card.get("config", {}).get("knobs") or "{}"
    base = LONG_PATHS if args.family == "long" else Knobs()
    knobs = dataclasses.replace(base, **json.loads(knobs_json))
    knobs_json = json.dumps(dataclasses.asdict(knobs))
    tasks = list(make_tasks(args.count, args.seed, knobs))
    llm = LLM(args.model, dtype=args.dtype, threads=args.threads, max_batch=8, adapter=args.adapter)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    t0 = time.perf_counter()
    res = {
        "model": str(model),
        "count": args.count,
        "seed": args.seed,
        "knobs": knobs_json,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "dtype": str(llm.dtype).replace("torch.", ""),
        "machine": describe(args.threads),
    }
    res["quality"] = quality(llm, tasks, params)
    if args.adapter and args.base_count:
        base = base_accuracy(args.model, tasks[: args.base_count], params, args.threads, args.dtype)
        res["base"] = base
    batches = [int(b) for b in args.batch.split(",")]
    prompts = [t.prompt for t in tasks[: args.speed_prompts]]
    res["speed"] = speed(llm, prompts, params, batches, args.runs, args.warmup)
    res["seconds"] = time.perf_counter() - t0
    res["command"] = "python benchmarks/bench_multiverse_model.py " + " ".join(sys.argv[1:])
    md = markdown(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(f"# Shipped Multiverse model, held-out evaluation\n\n{md}")
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, out.with_suffix(".png"))
    print(md)
    if args.update_card and card:
        card["evaluation"] = {"markdown": md, "quality": res["quality"], "speed": res["speed"]}
        for row in card["evaluation"]["quality"].values():
            if isinstance(row, dict):
                row.pop("examples", None)
        write_card(model, card)


if __name__ == "__main__":
    main()
