"""`braid serve` under load against llama.cpp's OpenAI-compatible server, on the same GGUF file.

The load client is the official `openai` Python client in asyncio: at each concurrency level
(1, 4, 16, 64 requests in flight) it sends the same streamed chat requests (Spec-Bench first
turns under the model's chat template, greedy, `--max-tokens` each) and measures, per request,
time to first token (first content chunk), inter-token latency (time between content chunks
divided by the tokens in them, from usage), and totals: requests/s and output tokens/s. braid's
acceptance comes from each response's `braid` object. Servers run one at a time on the same
threads: braid with each method (`ar` and the speculative one), then llama.cpp
(`llama-cpp-python[server]`, a benchmark-only dependency, in its own virtual environment; it
serves one request at a time).

    /work/llamacpp-venv/bin/pip install 'llama-cpp-python[server]'   # ~10 min build
    .venv/bin/python benchmarks/bench_serve.py [--requests 64] [--max-tokens 64]
    .venv/bin/python benchmarks/bench_serve.py --smoke    # tiny sizes: does it run?

Writes benchmarks/results/serve_cpu.{md,json,png} (--smoke: serve_smoke.*, never committed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

RESULTS = Path(__file__).parent / "results"
LLAMA_PYTHON = "/work/llamacpp-venv/bin/python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gguf_file() -> Path:
    from braid.model.registry import default_model_file

    return Path(default_model_file())


def braid_command(args, method: str, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "braid.cli", "serve", "--port", str(port)]
    cmd += ["--method", method, "--max-batch", str(args.max_batch), "--threads", str(args.threads)]
    cmd += ["--served-model-name", "model"]
    if args.model:
        cmd += ["--model", args.model]
    return cmd


def llama_command(args, port: int) -> list[str]:
    return [
        args.llama_python,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf_file()),
        "--model_alias",
        "model",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        str(args.threads),
        # as many batch threads as decode threads: its default (all cores) and a different
        # count crashed here (SIGILL in libggml-cpu) on the first request
        "--n_threads_batch",
        str(args.threads),
        "--n_ctx",
        "2048",
        # queue concurrent requests instead of cutting the running stream off (its default)
        "--interrupt_requests",
        "False",
    ]


class Server:
    def __init__(self, cmd: list[str], port: int, health: str, log: Path):
        self.port, self.log = port, log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {' '.join(cmd)}\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}{health}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"server did not come up: {' '.join(cmd)}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def one_request(client, messages, max_tokens: int) -> dict:
    start = time.perf_counter()
    stamps, usage, braid = [], None, None
    stream = await client.chat.completions.create(
        model="model",
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
        if chunk.usage is not None:
            usage = chunk.usage
        extra = chunk.model_extra or {}
        braid = extra.get("braid", braid)
    end = time.perf_counter()
    tokens = usage.completion_tokens if usage is not None else len(stamps)
    ttft = (stamps[0] - start) if stamps else end - start
    itl = (stamps[-1] - stamps[0]) / (tokens - 1) if len(stamps) > 1 and tokens > 1 else None
    return {"ttft": ttft, "itl": itl, "tokens": tokens, "seconds": end - start, "braid": braid}


async def load(url: str, conversations: list, concurrency: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def run(messages):
        async with gate:
            return await one_request(client, messages, max_tokens)

    start = time.perf_counter()
    results = await asyncio.gather(*(run(m) for m in conversations))
    wall = time.perf_counter() - start
    await client.close()
    return summarize(results, wall, concurrency)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))] if xs else float("nan")


def summarize(results: list[dict], wall: float, concurrency: int) -> dict:
    tokens = sum(r["tokens"] for r in results)
    ttft = [r["ttft"] for r in results]
    itl = [r["itl"] for r in results if r["itl"] is not None]
    drafted = sum((r["braid"] or {}).get("drafted", 0) for r in results)
    accepted = sum((r["braid"] or {}).get("accepted", 0) for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "seconds": round(wall, 3),
        "requests_per_s": round(len(results) / wall, 3),
        "output_tokens_per_s": round(tokens / wall, 2),
        "ttft_p50_ms": round(1000 * pct(ttft, 0.5), 1),
        "ttft_p90_ms": round(1000 * pct(ttft, 0.9), 1),
        "itl_p50_ms": round(1000 * pct(itl, 0.5), 2),
        "itl_p90_ms": round(1000 * pct(itl, 0.9), 2),
        "acceptance": round(accepted / drafted, 3) if drafted else None,
        "output_tokens": tokens,
    }


def conversations(count: int) -> list[list[dict]]:
    from braid.bench.prompts import specbench

    groups = specbench(None, max(1, count // 8 + 1))
    prompts = [p for group in groups.values() for p in group]
    return [[{"role": "user", "content": prompts[i % len(prompts)]}] for i in range(count)]


def bench_server(name: str, cmd: list[str], port: int, health: str, args, convs) -> list[dict]:
    log = (
        RESULTS / f"serve_{name.replace(' ', '_')}.log"
        if not args.smoke
        else Path(f"/tmp/serve_{name.replace(' ', '_')}.log")
    )
    server = Server(cmd, port, health, log)
    rows = []
    try:
        asyncio.run(load(server.url, convs[: max(1, args.max_batch)], args.max_batch, 8))  # warm
        for c in args.concurrency:
            row = asyncio.run(load(server.url, convs, c, args.max_tokens))
            row["server"] = name
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        server.stop()
    if not args.smoke:
        log.unlink(missing_ok=True)
    return rows


COLUMNS = [
    ("server", "server"),
    ("concurrency", "conc."),
    ("requests_per_s", "req/s"),
    ("output_tokens_per_s", "out tok/s"),
    ("ttft_p50_ms", "TTFT p50 ms"),
    ("ttft_p90_ms", "TTFT p90 ms"),
    ("itl_p50_ms", "ITL p50 ms"),
    ("itl_p90_ms", "ITL p90 ms"),
    ("acceptance", "acceptance"),
]


def table(rows: list[dict], meta: dict) -> str:
    lines = [
        "# braid serve vs llama.cpp server under load",
        "",
        f"{meta['model']}, {meta['requests']} streamed chat requests per level (Spec-Bench first "
        f"turns), greedy, max_tokens {meta['max_tokens']}, {meta['threads']} threads, braid "
        f"--max-batch {meta['max_batch']}; load client: openai {meta['openai']} (asyncio).",
        "",
        "Machine: {cpu}, {cores} cores, torch {torch}, {date}.".format(**meta["machine"]),
        f"Command: `.venv/bin/python {meta['command'].strip()}`",
        "",
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = ["-" if r.get(k) is None else str(r[k]) for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["server"] for r in rows):
        rs = [r for r in rows if r["server"] == name]
        xs = [r["concurrency"] for r in rs]
        a.plot(xs, [r["output_tokens_per_s"] for r in rs], marker="o", label=name)
        b.plot(xs, [r["ttft_p50_ms"] for r in rs], marker="o", label=name)
    for ax, label in ((a, "output tokens/s"), (b, "TTFT p50 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="braid --model (default: the default model, same GGUF file)")
    p.add_argument("--methods", default="ar,ngram", help="braid methods ('' none; %(default)s)")
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=16, help="braid serve --max-batch")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--llama-python", default=LLAMA_PYTHON, help="'' skips the llama.cpp peer")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, results under /tmp")
    args = p.parse_args()
    if args.smoke:
        args.requests, args.max_tokens, args.concurrency = 4, 8, "1,4"
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    convs = conversations(args.requests)
    rows: list[dict] = []
    for method in filter(None, args.methods.split(",")):
        port = free_port()
        cmd = braid_command(args, method, port)
        rows += bench_server(f"braid {method}", cmd, port, "/health", args, convs)
    if args.llama_python:
        if not Path(args.llama_python).exists():
            raise SystemExit(f"{args.llama_python} not found: pass --llama-python '' to skip")
        port = free_port()
        cmd = llama_command(args, port)
        rows += bench_server("llama.cpp", cmd, port, "/v1/models", args, convs)
    import openai

    from braid.bench.machine import describe

    meta = {
        "machine": describe(args.threads),
        "command": "benchmarks/bench_serve.py " + " ".join(sys.argv[1:]),
        "model": args.model or gguf_file().name,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "max_batch": args.max_batch,
        "openai": openai.__version__,
        "median_output_tokens": statistics.median(r["output_tokens"] for r in rows),
    }
    out = Path("/tmp") if args.smoke else RESULTS
    stem = "serve_smoke" if args.smoke else "serve_cpu"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / f"{stem}.md").write_text(table(rows, meta))
    plot(rows, out / f"{stem}.png")
    print(table(rows, meta))


if __name__ == "__main__":
    main()
