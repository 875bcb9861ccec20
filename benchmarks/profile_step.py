"""Where a decoding step's time goes: SmolLM2-135M-Instruct, `ar` steps at batch 1 and 8, by
operator (torch.profiler self CPU time) and by part of the step, against the roofline (weight
bytes per step / measured bandwidth).

    .venv/bin/python benchmarks/profile_step.py [--weights auto|bf16|int8] [--batch 1,8]

The parts: the weight matmuls (the roofline's share), attention (SDPA and the cache reads), the
cache writes, the small per-layer ops (norms, RoPE, residual adds, activation, reshapes), the
logit head's refinement, and what no operator accounts for: Python and dispatch, per layer.
Writes benchmarks/results/profile_<weights>.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from braid.bench.machine import describe, memory_bandwidth
from braid.model.batch import Append, build_batch
from braid.model.loader import load_model
from braid.model.registry import default_model_file

RESULTS = Path(__file__).parent / "results"
PARTS = {  # operator name -> part of the step
    "matmul": (
        "mkldnn::_linear_pointwise",
        "aten::_weight_int4pack_mm_for_cpu",
        "aten::_weight_int8pack_mm",
        "aten::linear",
        "aten::addmm",
        "aten::mm",
    ),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::bmm"),
    "cache write": ("aten::index_put_", "aten::_index_put_impl_"),
}


def part_of(name: str) -> str:
    for part, names in PARTS.items():
        if name in names:
            return part
    return "small ops"


def decode_steps(model, batch: int, prompt_len: int, steps: int):
    """Prefill `batch` random prompts, then a closure that runs `steps` greedy steps."""
    pool = model.new_pool(batch, prompt_len + 4 * steps + 8)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=gen)
    graphs = [pool.new_graph() for _ in range(batch)]
    appends = [Append(g, p, list(range(prompt_len))) for g, p in zip(graphs, prompts)]
    fb = build_batch(appends, model.windows)
    last = torch.tensor([o + prompt_len - 1 for o in fb.offsets])
    logits, _ = model.forward(fb, last)
    state = {"tokens": logits.argmax(-1)}

    def run() -> None:
        for _ in range(steps):
            appends = [Append(g, [int(t)], [g.length]) for g, t in zip(graphs, state["tokens"])]
            fb = build_batch(appends, model.windows)
            logits, _ = model.forward(fb)
            state["tokens"] = logits.argmax(-1)

    def reset() -> None:
        for g in graphs:
            g.truncate(prompt_len)

    return run, reset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--weights", default="auto")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = None if args.weights in ("auto", "int8", "int4") else args.weights
    model, _ = load_model(default_model_file(), dtype, args.weights)
    bandwidth = memory_bandwidth()
    weight_bytes = model.weight_bytes()
    layers = model.config.num_layers
    lines = [
        f"# One decoding step of SmolLM2-135M-Instruct, weights {args.weights}",
        "",
        f"{describe(args.threads)}, {bandwidth / 1e9:.1f} GB/s measured; weights read per step "
        f"{weight_bytes / 1e6:.1f} MB, so the roofline step is "
        f"{1e3 * weight_bytes / bandwidth:.2f} ms. Prompt {args.prompt_len} tokens, "
        f"{args.steps} greedy steps, median of 5 timed repeats; operator times from "
        "torch.profiler (self CPU).",
        "Command: `.venv/bin/python benchmarks/profile_step.py --weights "
        f"{args.weights} --batch {args.batch}`",
        "",
    ]
    for b in (int(x) for x in args.batch.split(",")):
        run, reset = decode_steps(model, b, args.prompt_len, args.steps)
        run()
        reset()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) / args.steps)
            reset()
        step = statistics.median(times)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        reset()
        ops = defaultdict(lambda: [0.0, 0])
        for e in prof.key_averages():
            ops[e.key][0] += e.self_cpu_time_total / 1e3 / args.steps
            ops[e.key][1] += e.count / args.steps
        parts = defaultdict(float)
        for name, (ms, _) in ops.items():
            parts[part_of(name)] += ms
        profiled = sum(parts.values())
        lines += [
            f"## Batch {b}: {1e3 * step:.2f} ms per step, {b / step:.1f} tok/s "
            f"({100 * weight_bytes / bandwidth / step:.0f}% of the roofline)",
            "",
            "| part | ms / step | share | per layer (us) |",
            "|---|---|---|---|",
        ]
        # profiling slows everything a little; shares are of the profiled total
        for part, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
            lines.append(
                f"| {part} | {ms:.2f} | {100 * ms / profiled:.0f}% | {1e3 * ms / layers:.0f} |"
            )
        lines.append(
            f"| (timed step minus operators: Python, dispatch) | "
            f"{max(1e3 * step - profiled, 0):.2f} | | |"
        )
        lines += ["", "| operator | ms / step | calls / step |", "|---|---|---|"]
        for name, (ms, calls) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:18]:
            lines.append(f"| {name} | {ms:.3f} | {calls:.0f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out) if args.out else RESULTS / f"profile_{args.weights}.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
