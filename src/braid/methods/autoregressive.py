"""Plain autoregressive decoding: one new token per request per large-model pass."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from braid.methods.penalties import penalise
from braid.model.batch import Append
from braid.sampling import process_logits, sample

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request


def pending_tokens(req: Request) -> tuple[list[int], list[int]]:
    """Tokens not yet in the cache (the whole prompt, or the last sampled token) and positions."""
    start = req.graph.length
    ids = req.all_ids[start:]
    return ids, list(range(start, start + len(ids)))


def sample_next(logits: torch.Tensor, requests: list[Request]) -> list[int]:
    """One token per row: argmax for greedy requests, a seeded draw from the processed rest."""
    tokens = logits.argmax(-1).tolist()
    rows = [i for i, r in enumerate(requests) if not r.params.greedy]
    if rows:
        probs = process_logits(logits[rows], [requests[i].params for i in rows])
        for j, i in enumerate(rows):
            tokens[i] = sample(probs[j], requests[i].generator)
    return tokens


class Autoregressive:
    name = "ar"
    supports_logits_processors = True

    def step(self, engine: Engine, requests: list[Request]) -> None:
        appends, last = [], []
        n = 0
        for req in requests:
            ids, pos = pending_tokens(req)
            appends.append(Append(req.graph, ids, pos))
            n += len(ids)
            last.append(n - 1)
        logits, _, _ = engine.forward(appends, torch.tensor(last, device=engine.device))
        if any(req.params.logits_processors for req in requests):
            logits = logits.clone()  # a normal tensor: processors may write in place
        for i, req in enumerate(requests):
            for proc in req.params.logits_processors:
                logits[i] = proc(req.output_ids, logits[i])
        logits = penalise(logits, requests)
        for i, (req, token) in enumerate(zip(requests, sample_next(logits, requests), strict=True)):
            req.stats.passes += 1
            req.accept([token], logits[i : i + 1])

    def release(self, request: Request) -> None:
        pass
