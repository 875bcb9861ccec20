"""``braid distill-data``: the target answers chat prompts; its answers train a draft.

Self-distillation (Medusa-2, EAGLE): a draft learns best from the text its target writes, so
the target (run by braid, method "ar") answers the prompts of :mod:`braid.training.prompts`
under its chat template, greedy and sampled in turn (``--temperatures``). With each answer
token the file keeps the target's ``--top-k`` most likely ids and their log-probabilities at
temperature 1 (read by a logits processor from the logits that produced the token), so the
draft can be trained towards the target's distribution without running the target again.

Output: JSONL, one answer per line: ``index``, ``kind``, ``temperature``, ``prompt_ids``,
``answer_ids``, ``top_ids`` and ``top_logprobs`` (one row per answer token). Lines are written
whole and flushed per batch; a rerun with the same file continues after the last complete line
(a torn last line is dropped), and prompt ``i`` is a pure function of (seed, i).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from braid.training import flags
from braid.training.corpus import cache_root
from braid.training.prompts import KINDS, SOURCE, make_prompt


@dataclass
class DistillConfig:
    out: str = ""  # default: <braid cache>/distill/smollm2.jsonl
    model: str | None = None  # the target; None = the default model
    prompts: int = 2000
    seed: int = 0
    batch: int = 32
    max_tokens: int = 256
    temperatures: str = "0,0.8"
    top_k: int = 8
    dtype: str = "bf16"
    threads: int = 0


_HELP = {
    "out": "JSONL file to write (appended to: a rerun resumes); default in the braid cache",
    "model": "the target model (default: the default model)",
    "prompts": "number of prompts (each answered once)",
    "batch": "prompts generated at once",
    "max_tokens": "answer length limit in tokens",
    "temperatures": "comma-separated sampling temperatures, taken in turn (0 = greedy)",
    "top_k": "target ids and log-probabilities kept per answer token",
    "dtype": "the target's dtype (bf16 / fp32); weights dequantized",
}


def default_out() -> Path:
    return cache_root() / "distill" / "smollm2.jsonl"


class TopK:
    """A logits processor that records the target's top-k log-probabilities per position."""

    def __init__(self, k: int):
        self.k = k
        self.rows: dict[int, tuple[list[int], list[float]]] = {}

    def __call__(self, ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), -1)
        top = logp.topk(self.k)
        self.rows[len(ids)] = (top.indices.tolist(), [round(x, 3) for x in top.values.tolist()])
        return logits


def complete_lines(path: Path) -> int:
    """Number of whole JSON lines in `path`; a torn last line is cut off the file."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return data[:end].count(b"\n")


def temperature_of(index: int, temps: list[float]) -> float:
    return temps[(index // len(KINDS)) % len(temps)]  # every kind gets every temperature


def generate(cfg: DistillConfig, quiet: bool = False) -> Path:
    from tqdm import tqdm

    from braid import LLM, SamplingParams

    out = Path(cfg.out) if cfg.out else default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    temps = [float(t) for t in cfg.temperatures.split(",")]
    done = complete_lines(out)
    llm = LLM(cfg.model, dtype=cfg.dtype, threads=cfg.threads or None, max_batch=cfg.batch)
    stops = set(llm.chat_params(SamplingParams()).stop_token_ids) | set(
        llm.model.config.eos_token_ids
    )
    meta = {"source": SOURCE, "target": llm.name, "config": vars(cfg), "stop_ids": sorted(stops)}
    # written first, so that the data of a run stopped early is described too
    out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    bar = tqdm(total=cfg.prompts, initial=done, desc="distill", unit="answer", disable=quiet)
    tokens, start = 0, time.perf_counter()
    with open(out, "a", encoding="utf-8") as f:
        for first in range(done, cfg.prompts, cfg.batch):
            idx = list(range(first, min(cfg.prompts, first + cfg.batch)))
            prompts, params, records = [], [], []
            for i in idx:
                kind, text = make_prompt(cfg.seed, i)
                t = temperature_of(i, temps)
                rec = TopK(cfg.top_k)
                p = SamplingParams(
                    max_tokens=cfg.max_tokens,
                    temperature=t,
                    top_p=1.0,
                    top_k=0,
                    seed=cfg.seed * 1_000_003 + i,
                    ignore_eos=True,  # same length for all: a batch that shrinks runs slower
                    logits_processors=[rec],
                )
                prompts.append(llm.chat_prompt([{"role": "user", "content": text}]))
                params.append(p)
                records.append((i, kind, t, rec))
            outs = llm.generate(prompts, params)
            for (i, kind, t, rec), ids, o in zip(records, prompts, outs, strict=True):
                answer = list(o.outputs[0].token_ids)
                end = next((j for j, y in enumerate(answer) if y in stops), None)
                answer = answer if end is None else answer[: end + 1]  # the end of turn kept
                rows = [rec.rows[j] for j in range(len(answer))]
                line = {
                    "index": i,
                    "kind": kind,
                    "temperature": t,
                    "prompt_ids": ids,
                    "answer_ids": answer,
                    "top_ids": [r[0] for r in rows],
                    "top_logprobs": [r[1] for r in rows],
                }
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
                tokens += len(answer)
            f.flush()
            bar.update(len(idx))
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    return out


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "distill-data",
        help="have the target answer generated chat prompts (self-distillation data for a draft)",
        description=__doc__.split("\n\n")[0],
    )
    flags.add_config_arguments(p, DistillConfig, _HELP, {})
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        cfg = flags.config_from_args(DistillConfig, args)
        out = generate(cfg, quiet=args.quiet)
        if not args.quiet:
            print(f"wrote {out}")
        return 0

    return flags.run_reporting_errors("distill-data", body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m braid.training.distill")
    flags.add_config_arguments(p, DistillConfig, _HELP, {})
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
