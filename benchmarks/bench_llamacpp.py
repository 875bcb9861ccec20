"""braid against llama.cpp on llama.cpp's own file: SmolLM2-135M-Instruct.Q4_1.gguf, Spec-Bench
first turns under the chat template, greedy, batch 1, 2 threads, in one run.

Rows: braid `ar` with the file dequantized to bf16, with `--weights int8` and with the file's own
integers (`--weights auto`), braid's prompt lookup (`ngram`) on the file's integers, llama.cpp
plain and with its prompt lookup, and transformers (bf16). Each prompt runs on every engine in
turn (llama.cpp in a worker process of its own virtual environment, waiting while braid runs),
so drift hits all alike; a row's speed is its total tokens over its total time, median of runs.
The roofline share is tokens/s x weight bytes read per token / measured bandwidth.

    /work/llamacpp-venv/bin/pip install llama-cpp-python   # benchmark-only, ~10 min build
    .venv/bin/python benchmarks/bench_llamacpp.py [--per-task 2] [--runs 3]

Writes benchmarks/results/llamacpp_cpu.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from braid import LLM, SamplingParams
from braid.bench.machine import describe, memory_bandwidth
from braid.bench.prompts import specbench
from braid.model.loader import resolve_model_dir
from braid.model.registry import default_model_file

RESULTS = Path(__file__).parent / "results"
WORKER = Path(__file__).parent / "llamacpp_worker.py"
# label -> (weights, method) for braid rows
BRAID = {
    "braid ar bf16": ("bf16", "ar"),
    "braid ar int8": ("int8", "ar"),
    "braid ar file (int4)": ("auto", "ar"),
    "braid ngram file (int4)": ("auto", "ngram"),
}
LLAMA = {"llama.cpp": "plain", "llama.cpp lookup": "lookup"}


class LlamaWorker:
    def __init__(self, python: str, path: Path, threads: int):
        self.proc = subprocess.Popen(
            [python, str(WORKER), str(path), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self.proc.stdout.readline()
        if not ready:
            raise SystemExit(
                f"llama.cpp worker did not start ({python}): is llama-cpp-python in it?"
            )

    def run(self, mode: str, ids: list[int], max_tokens: int) -> tuple[list[int], float]:
        self.proc.stdin.write(json.dumps({"mode": mode, "ids": ids, "max_tokens": max_tokens}))
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        return out["tokens"][: out["count"]], out["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def gguf_tensor_bytes(path: Path) -> int:
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)


def agreement(a: list[int], b: list[int]) -> int:
    """Length of the common prefix: greedy tokens identical up to there."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--per-task", type=int, default=2, help="prompts per Spec-Bench subtask")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--llama-python",
        default=os.environ.get("BRAID_LLAMA_PYTHON", "/work/llamacpp-venv/bin/python"),
    )
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "llamacpp_cpu"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = default_model_file()

    llms = {label: LLM(weights=w, threads=args.threads) for label, (w, _) in BRAID.items()}
    tok = next(iter(llms.values()))
    groups = specbench(None, args.per_task)
    prompts = [
        (task, tok.chat_prompt([{"role": "user", "content": t}]))
        for task, texts in groups.items()
        for t in texts
    ]
    worker = LlamaWorker(args.llama_python, path, args.threads)
    hf = None
    if not args.no_transformers:
        import transformers as tf

        hf_dir = resolve_model_dir(path, torch.bfloat16)
        hf = tf.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16).eval()

    def run_braid(label: str, ids: list[int]) -> tuple[list[int], float]:
        _, method = BRAID[label]
        sp = SamplingParams(temperature=0, max_tokens=args.new_tokens)
        start = time.perf_counter()
        out = llms[label].generate([ids], sp, method=method)[0].outputs[0]
        return list(out.token_ids), time.perf_counter() - start

    def run_hf(ids: list[int]) -> tuple[list[int], float]:
        x = torch.tensor([ids])
        start = time.perf_counter()
        with torch.inference_mode():
            y = hf.generate(x, max_new_tokens=args.new_tokens, do_sample=False)
        return y[0, len(ids) :].tolist(), time.perf_counter() - start

    engines = {label: (lambda ids, _l=label: run_braid(_l, ids)) for label in BRAID}
    for label, mode in LLAMA.items():
        engines[label] = lambda ids, _m=mode: worker.run(_m, ids, args.new_tokens)
    if hf is not None:
        engines["transformers bf16"] = run_hf

    # warm-up: one prompt on every engine
    for run in engines.values():
        run(prompts[0][1])
    speeds: dict[str, list[float]] = {k: [] for k in engines}
    per_task: dict[str, dict[str, list[float]]] = {k: {} for k in engines}
    outputs: dict[str, list[list[int]]] = {k: [] for k in engines}
    for r in range(args.runs):
        totals = {k: [0, 0.0] for k in engines}
        task_totals: dict[str, dict[str, list]] = {k: {} for k in engines}
        for task, ids in prompts:
            for label, run in engines.items():
                tokens, seconds = run(ids)
                totals[label][0] += len(tokens)
                totals[label][1] += seconds
                tt = task_totals[label].setdefault(task, [0, 0.0])
                tt[0] += len(tokens)
                tt[1] += seconds
                if r == 0:
                    outputs[label].append(tokens)
        for label, (n, s) in totals.items():
            speeds[label].append(n / s)
            for task, (tn, ts) in task_totals[label].items():
                per_task[label].setdefault(task, []).append(tn / ts)
        print(f"run {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in speeds.items()))
    worker.close()

    bandwidth = memory_bandwidth()
    llama_bytes = gguf_tensor_bytes(path)
    bytes_per_token = {label: llms[label].model.weight_bytes() for label in BRAID}
    bytes_per_token.update({label: llama_bytes for label in LLAMA})
    if hf is not None:
        bytes_per_token["transformers bf16"] = llms["braid ar bf16"].model.weight_bytes()
    base = statistics.median(speeds["llama.cpp"])
    ref_out = outputs["llama.cpp"]
    rows = []
    for label, v in speeds.items():
        med = statistics.median(v)
        roof = bandwidth / bytes_per_token[label]
        agree = [agreement(a, b) for a, b in zip(outputs[label], ref_out)]
        rows.append(
            {
                "engine": label,
                "tok_s": med,
                "vs_llama_cpp": med / base,
                "weight_mb": bytes_per_token[label] / 1e6,
                "roofline_share": med / roof,
                "runs": v,
                "per_task": {t: statistics.median(x) for t, x in per_task[label].items()},
                "agree_with_llama_cpp": statistics.median(agree),
                "tokens": sum(len(o) for o in outputs[label]),
            }
        )
    info = describe(args.threads) | {
        "bandwidth_gb_s": bandwidth / 1e9,
        "prompts": len(prompts),
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "file": path.name,
    }
    write(Path(args.out), rows, info, list(groups))


def write(out: Path, rows: list[dict], info: dict, tasks: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    lines = [
        f"# braid vs llama.cpp on {info['file']} (batch 1, greedy)",
        "",
        f"{info['cpu']}, {info['threads']} threads, {info['bandwidth_gb_s']:.1f} GB/s measured, "
        f"torch {info['torch']}, {info['date']}. Spec-Bench first turns ({info['prompts']} "
        f"prompts, chat template), up to {info['new_tokens']} new tokens, median of "
        f"{info['runs']} runs after a warm-up; every prompt on every engine in turn.",
        "Command: `.venv/bin/python benchmarks/bench_llamacpp.py`",
        "",
        "| engine | tok/s | vs llama.cpp | weights read/token (MB) | roofline share | "
        "greedy prefix = llama.cpp (median tokens) | " + " | ".join(tasks) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(tasks),
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['tok_s']:.1f} | {r['vs_llama_cpp']:.2f}x | "
            f"{r['weight_mb']:.0f} | {100 * r['roofline_share']:.0f}% | "
            f"{r['agree_with_llama_cpp']:.0f} | "
            + " | ".join(f"{r['per_task'].get(t, float('nan')):.1f}" for t in tasks)
            + " |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    names = [r["engine"] for r in rows]
    ax.barh(
        names, [r["tok_s"] for r in rows], color=["C0" if "braid" in n else "C1" for n in names]
    )
    for i, r in enumerate(rows):
        ax.text(r["tok_s"], i, f" {r['tok_s']:.0f} ({r['vs_llama_cpp']:.2f}x)", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s (batch 1, greedy, Spec-Bench chat prompts)")
    ax.set_title(f"{info['file']} on {info['cpu']}, {info['threads']} threads")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    sys.exit(main())
