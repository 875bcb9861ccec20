"""What the draft-model methods share: the draft's own token graphs and its distributions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from braid.cache import KVPool, TokenGraph
from braid.model.transformer import Transformer
from braid.sampling import process_logits

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request


class Drafter:
    """A draft model with one token graph per request, freed when the request ends."""

    def __init__(self, model: Transformer):
        self.model = model
        model.lm_head.refine = False  # drafts need no fp32-exact logits near the top
        self.pool: KVPool | None = None
        self.graphs: dict[int, TokenGraph] = {}

    def graph(self, engine: Engine, req: Request) -> TokenGraph:
        if self.pool is None:
            limit = min(self.model.config.max_position_embeddings, engine.max_context)
            self.pool = self.model.new_pool(engine.max_batch, limit)
        if req.id not in self.graphs:
            self.graphs[req.id] = self.pool.new_graph()
        return self.graphs[req.id]

    def release(self, req: Request) -> None:
        graph = self.graphs.pop(req.id, None)
        if graph is not None:
            graph.free()

    def budget(
        self, engine: Engine, req: Request, gamma: int, draft_width: int = 1, target_width: int = 1
    ) -> int:
        """Draft length for this step: what the request may still emit and both caches hold.

        The verify pass holds the context plus `target_width` rows per drafted token (a beam
        tree holds every node); the draft holds the context plus `draft_width` rows for each
        draft pass after the first (the last drafted tokens are never fed back).
        """
        room_target = (engine.max_context - req.num_tokens) // target_width
        room_draft = (self.pool.max_capacity - req.num_tokens) // draft_width + 1
        return max(0, min(gamma, req.remaining - 1, room_target, room_draft))

    def probs(self, logits: torch.Tensor, reqs: list[Request], vocab: int) -> torch.Tensor:
        """Processed draft distributions, laid over the target's vocabulary."""
        if logits.shape[1] > vocab:  # ids the target cannot emit must not be drafted
            logits = logits[:, :vocab]
        probs = process_logits(logits, [r.params for r in reqs])
        if probs.shape[1] < vocab:
            probs = torch.nn.functional.pad(probs, (0, vocab - probs.shape[1]))
        return probs
