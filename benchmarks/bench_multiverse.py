"""Issue 6's benchmark: Multiverse decoding of a scripted structure against `ar`, same tokens.

A scripted logits processor makes the model write one parallel block: a Goal with P outlines,
P paths of L free tokens each (the model's own greedy choice, tags banned), a short conclusion.
`ar` then generates the same number of tokens per request in the same run. Models: a random
~30M Llama (vocabulary with room for the tags) and the bundled target with the tags added
(embeddings resized by `braid.multiverse.tags.add_tags`). Writes a table, JSON and a plot.

    .venv/bin/python benchmarks/bench_multiverse.py            # full run (~15 min here)
    .venv/bin/python benchmarks/bench_multiverse.py --paths 1,4 --batch 1 --runs 1   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from braid import LLM, SamplingParams
from braid.bench.machine import describe
from braid.bench.models import CONFIGS
from braid.multiverse import tags as T

ROOT = Path(__file__).parents[1]
OUT = ROOT / "benchmarks" / "results" / "multiverse_cpu"


class Script:
    """Forces one block with `paths` paths of `length` free tokens; phase from context length."""

    def __init__(self, llm: LLM, paths: int, length: int, conclusion: int = 8):
        tok = llm.tokenizer
        self.id = T.tag_ids(tok)
        eos = (llm.model.config.eos_token_ids or tok.eos_token_ids)[0]
        header = [self.id[T.PARALLEL], self.id[T.GOAL]]
        for k in range(1, paths + 1):
            header += [self.id[T.OUTLINE], *tok.encode(f"{k}: part"), self.id[T.OUTLINE_END]]
        self.header = header + [self.id[T.GOAL_END]]
        self.head = 1 + len(tok.encode("1:"))
        self.paths, self.length, self.conclusion = paths, length, conclusion
        self.start = len(self.header) + paths * (self.head + length + 1) + 1
        self.tail = [self.id[T.CONCLUSION_END], self.id[T.PARALLEL_END], eos]
        self.banned = torch.tensor([*self.id.values(), eos])
        self.total = self.start + conclusion + len(self.tail)

    def __call__(self, ctx: list[int], logits: torch.Tensor) -> torch.Tensor:
        n = len(ctx)
        if n < len(self.header):
            return self._force(logits, self.header[n])
        if n < self.start:  # inside a path
            if n - len(self.header) - self.head == self.length:
                return self._force(logits, self.id[T.PATH_END])
            return self._free(logits)
        j = n - self.start - self.conclusion
        return self._free(logits) if j < 0 else self._force(logits, self.tail[j])

    def _force(self, logits: torch.Tensor, token: int) -> torch.Tensor:
        out = torch.full_like(logits, float("-inf"))
        out[token] = 0.0
        return out

    def _free(self, logits: torch.Tensor) -> torch.Tensor:
        logits[self.banned] = float("-inf")
        return logits


def random_model(path: Path) -> Path:
    """A random ~30M Llama (the bench's llama-30m shape, 14 layers) with the bundled BPE
    tokenizer plus the tags: labels like "2:" must tokenize, which a word-level one cannot."""
    import shutil

    import transformers as tf

    from braid.llm import bundled_model

    torch.manual_seed(0)
    shape = dict(CONFIGS["llama-30m"], num_hidden_layers=14)
    config = tf.LlamaConfig(
        vocab_size=8192 + 16, max_position_embeddings=2048, tie_word_embeddings=True, **shape
    )
    tf.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bundled_model() / name, path / name)
    T.add_tags_to_tokenizer_file(path)
    return path


def bundled_with_tags(path: Path) -> Path:
    import transformers as tf

    from braid.llm import bundled_model

    src = bundled_model()
    tok = tf.AutoTokenizer.from_pretrained(src)
    model = tf.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    T.add_tags(tok, model)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def time_pair(llm, prompt, batch, script, runs, warmup):
    params = [SamplingParams(max_tokens=10_000, temperature=0, logits_processors=[script])]
    mv_times, ar_times, out = [], [], None
    for r in range(warmup + runs):
        t = time.perf_counter()
        outs = llm.generate([prompt] * batch, params * batch, method="multiverse")
        mv = time.perf_counter() - t
        out = outs[0]
        ar_params = SamplingParams(max_tokens=len(out.token_ids), temperature=0, ignore_eos=True)
        t = time.perf_counter()
        llm.generate([prompt] * batch, [ar_params] * batch, method="ar")
        ar = time.perf_counter() - t
        if r >= warmup:
            mv_times.append(mv)
            ar_times.append(ar)
    if out.stats.paths != script.paths or out.stats.warnings or out.finish_reason != "stop":
        raise RuntimeError(f"the scripted block did not run as planned: {out.stats.as_dict()}")
    return statistics.median(mv_times), statistics.median(ar_times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="llama-30m,bundled")
    ap.add_argument("--paths", default="1,2,4,8")
    ap.add_argument("--length", type=int, default=64, help="free tokens per path (L)")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            make = random_model if name == "llama-30m" else bundled_with_tags
            llm = LLM(make(Path(tmp) / name), dtype="bf16", max_batch=8, threads=args.threads)
            prompt = (
                list(range(10, 42))
                if name == "llama-30m"
                else llm.tokenizer.encode("def parse(text):\n    ")
            )
            for batch in map(int, args.batch.split(",")):
                llm.max_batch = batch
                for p in map(int, args.paths.split(",")):
                    script = Script(llm, p, args.length)
                    mv, ar, out = time_pair(llm, prompt, batch, script, args.runs, args.warmup)
                    s = out.stats
                    rows.append(
                        dict(
                            model=name,
                            batch=batch,
                            paths=p,
                            tokens=s.generated_tokens,
                            critical_path=s.critical_path,
                            parallelism=round(s.parallelism, 2),
                            tokens_per_pass=round(s.generated_tokens / s.passes, 2),
                            multiverse_s=round(mv, 3),
                            ar_s=round(ar, 3),
                            speedup=round(ar / mv, 2),
                        )
                    )
                    print(rows[-1], flush=True)
    write(rows, args)


def write(rows: list[dict], args) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = ", ".join(f"{k} {v}" for k, v in describe(args.threads).items())
    cols = list(rows[0])
    lines = [
        "# Multiverse vs ar: scripted block of P paths x L tokens, same tokens generated",
        "",
        f"Machine: {machine}. bf16, greedy, L = {args.length}, {args.runs} runs (median) after "
        f"{args.warmup} warm-up. Command: `python benchmarks/bench_multiverse.py`.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "length": args.length, "rows": rows}, indent=1)
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({(r["model"], r["batch"]) for r in rows}):
        pts = [(r["paths"], r["speedup"]) for r in rows if (r["model"], r["batch"]) == key]
        ax.plot(*zip(*pts), marker="o", label=f"{key[0]}, batch {key[1]}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("parallel paths P")
    ax.set_ylabel("speedup over ar (same tokens)")
    ax.set_title(f"Multiverse speedup, L = {args.length}, CPU bf16")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
