"""What a draft costs next to its target in braid: the time of one pass of one new token on
top of a `context`-token cache, batch 1, target and draft interleaved (so load from other
processes hits both alike), median of `reps`.

``python -m braid.training.draft_eval --draft DIR [--weights auto|bf16] [--threads N]`` prints
JSON: target ms, draft ms (its shortlist head), the same draft with the full tied head, and the
ratios. ``--export-hf OUT`` instead writes the draft as a plain Hugging Face directory (its
layers, the target's embeddings, a full tied head: what `transformers`' assisted generation
loads, e.g. for ``braid bench --peer transformers-assisted --draft OUT``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from braid.model.batch import Append, build_batch
from braid.model.quant import QuantWeight
from braid.model.transformer import Transformer


def _timer(model: Transformer, context: int, reps: int):
    """A function that runs one 1-token pass after `context` cached tokens and returns its ms."""
    pool = model.new_pool(1, context + reps + 8)
    graph = pool.new_graph()
    ids = [(7 * i + 11) % 1000 + 100 for i in range(context)]
    model.forward(build_batch([Append(graph, ids, range(context))], model.windows))
    last = torch.tensor([0])

    def one() -> float:
        n = graph.length
        start = time.perf_counter()
        model.forward(build_batch([Append(graph, [42], [n])], model.windows), last)
        return 1000 * (time.perf_counter() - start)

    return one


def pass_times(models: dict[str, Transformer], context: int = 128, reps: int = 40) -> dict:
    timers = {k: _timer(m, context, reps + 5) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(reps + 5):
        for k, f in timers.items():
            t = f()
            if i >= 5:  # warm-up
                times[k].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    from braid import LLM

    p = argparse.ArgumentParser(prog="python -m braid.training.draft_eval")
    p.add_argument("--model", default=None)
    p.add_argument("--draft", default=None)
    p.add_argument("--weights", default=None, help="the target's weights (auto: the file's)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--export-hf", default=None, help="write the draft as a Hugging Face dir")
    a = p.parse_args(argv)
    if a.export_hf:
        from pathlib import Path

        from braid.methods.draft import SHIPPED_DRAFT
        from braid.model.registry import ASSETS
        from braid.training.train_draft import default_target_dir, export_hf

        src = Path(a.draft) if a.draft else ASSETS / SHIPPED_DRAFT
        target = Path(a.model) if a.model else default_target_dir()
        print(export_hf(src, target, Path(a.export_hf)))
        return 0
    llm = LLM(a.model, dtype=a.dtype, weights=a.weights, threads=a.threads, draft=a.draft)
    draft = llm.draft_model()
    embed = draft.embed
    dense = embed.dequantize() if isinstance(embed, QuantWeight) else embed
    full = Transformer(draft.config, embed, draft.layers, draft.norm, dense, draft.dtype)
    full.lm_head.refine = False
    draft.lm_head.refine = False
    ms = pass_times(
        {"target": llm.model, "draft": draft, "draft_full_head": full}, a.context, a.reps
    )
    ms["draft_over_target"] = ms["draft"] / ms["target"]
    ms["full_head_draft_over_target"] = ms["draft_full_head"] / ms["target"]
    ms["threads"] = torch.get_num_threads()
    ms["target_weights"] = a.weights or "auto"
    print(json.dumps(ms, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
