"""Output quality of the decoding methods, measured outside the timed calls (`--quality`).

- **Perplexity under the target**: one teacher-forced target pass over prompt + output; the mean
  negative log-likelihood of the output tokens under the target's plain distribution
  (temperature 1, no truncation), exponentiated over all outputs of a prompt group. `ar` gives the
  reference value; greedy outputs score lower than sampled ones by construction.
- **Distance from the target's distribution**: MTAD emits accepted draft tokens from a
  distribution that is not available in closed form, so the distance is measured empirically:
  the total variation between the distributions of the first `k` generated tokens under the
  method and under `ar`, each from `seeds` seeded samples per prompt (temperature 1), averaged
  over a few prompts. Empirical TV is biased upwards by sampling noise, so the same statistic
  between two independent sets of `ar` samples (different seeds) is reported as its floor: an
  exact method (`spec`, `block`) should sit at the floor, a lossy one above it. Each request may
  generate gamma + 1 tokens so that its first step drafts a full gamma tokens.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch

from braid.methods.config import AUTO, MethodConfig
from braid.model.batch import Append, build_batch
from braid.model.transformer import Transformer
from braid.sampling import SamplingParams


def output_nll(model: Transformer, prompt: Sequence[int], output: Sequence[int]) -> float:
    """Sum over output tokens of -log p_target(token | everything before it), temperature 1."""
    if not output:
        return 0.0
    ids = list(prompt) + list(output)
    pool = model.new_pool(1, len(ids))
    graph = pool.new_graph()
    try:
        batch = build_batch([Append(graph, ids[:-1], range(len(ids) - 1))], model.windows)
        rows = torch.arange(len(prompt) - 1, len(ids) - 1)
        logits, _ = model.forward(batch, rows)
    finally:
        graph.free()
    logp = torch.log_softmax(logits.double(), dim=-1)
    return float(-logp[torch.arange(len(output)), torch.tensor(output)].sum())


def perplexity(
    model: Transformer, prompts: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]]
) -> float:
    """exp(mean NLL per output token) over all (prompt, output) pairs."""
    total = sum(output_nll(model, p, o) for p, o in zip(prompts, outputs, strict=True))
    count = sum(len(o) for o in outputs)
    return math.exp(total / count) if count else float("nan")


def empirical_tv(a: Sequence[tuple], b: Sequence[tuple]) -> float:
    """Total variation between the empirical distributions of two samples."""
    ca, cb = Counter(a), Counter(b)
    return 0.5 * sum(abs(ca[k] / len(a) - cb[k] / len(b)) for k in ca.keys() | cb.keys())


def first_token_samples(
    llm, prompt: Sequence[int], method: str, seeds: range, k: int, gamma: int | str
) -> list[tuple]:
    config = MethodConfig.sharing_gamma(method, gamma)
    longest = 8 if config.gamma == AUTO else config.gamma  # "auto" drafts at most 8
    params = [
        SamplingParams(max_tokens=max(k, longest + 1), temperature=1.0, seed=s, ignore_eos=True)
        for s in seeds
    ]
    outs = llm.generate([list(prompt)] * len(seeds), params, method=config)
    return [tuple(o.token_ids[:k]) for o in outs]


def distance_from_ar(
    llm,
    prompts: Sequence[Sequence[int]],
    methods: Sequence[str],
    gamma: int | str = 4,
    seeds: int = 256,
    k: int = 2,
) -> dict[str, float]:
    """Mean empirical TV of the first k tokens, each method vs `ar`; "ar" maps to the floor
    (ar vs ar with other seeds). Seed ranges never overlap between the sample sets."""
    tv: dict[str, list[float]] = {m: [] for m in methods}
    tv.setdefault("ar", [])
    for prompt in prompts:
        ar = first_token_samples(llm, prompt, "ar", range(seeds), k, gamma)
        for i, m in enumerate(["ar"] + [m for m in methods if m != "ar"], start=1):
            other = first_token_samples(llm, prompt, m, range(i * seeds, (i + 1) * seeds), k, gamma)
            tv[m].append(empirical_tv(ar, other))
    return {m: sum(v) / len(v) for m, v in tv.items()}
