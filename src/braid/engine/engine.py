"""The step loop: admit waiting requests, let the method advance the running ones, retire them.

Continuous batching: a request leaves as soon as it finishes and a waiting one takes its slot in
the next step, whatever the others are doing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence

import torch

from braid.engine.request import Request, RequestOutput
from braid.errors import InvalidRequestError
from braid.methods import Method
from braid.model.batch import Append, ForwardBatch, build_batch
from braid.model.tokenizer import Tokenizer
from braid.model.transformer import Transformer
from braid.sampling import SamplingParams


class Engine:
    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        method: Method,
        max_batch: int = 8,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.method = method
        self.max_batch = max_batch
        self.max_context = model.config.max_position_embeddings
        # cached rows may outnumber positions when a method keeps parallel branches (multiverse)
        rows = self.max_context * getattr(method, "rows_per_position", 1)
        self.pool = model.new_pool(max_batch, rows)
        self.eos_token_ids = model.config.eos_token_ids or tokenizer.eos_token_ids
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._next_id = 0

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, prompt: str | Sequence[int], params: SamplingParams) -> Request:
        if isinstance(prompt, str):
            text, ids = prompt, self.tokenizer.encode(prompt)
        else:
            text, ids = None, [int(t) for t in prompt]
        if not ids:
            raise InvalidRequestError("empty prompt: give at least one token of text")
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})")
        if len(ids) >= self.max_context:
            raise InvalidRequestError(
                f"prompt has {len(ids)} tokens; the model's context is {self.max_context}, "
                "leaving no room to generate: shorten the prompt"
            )
        if params.logits_processors and not getattr(
            self.method, "supports_logits_processors", False
        ):
            raise InvalidRequestError(
                f"logits_processors are supported by methods 'ar' and 'multiverse', "
                f"not {self.method.name!r}"
            )
        check = getattr(self.method, "check", None)
        if check is not None:
            check(self, params)
        req = Request(
            self._next_id, text, ids, params, self.tokenizer, self.eos_token_ids, self.max_context
        )
        self._next_id += 1
        self.waiting.append(req)
        return req

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> list[Request]:
        """One scheduling step; returns the requests that advanced (finished ones included)."""
        while self.waiting and len(self.running) < self.max_batch:
            req = self.waiting.popleft()
            req.graph = self.pool.new_graph()
            req.started = time.perf_counter()
            self.running.append(req)
        stepped = list(self.running)
        if stepped:
            self.method.step(self, stepped)
        now = time.perf_counter()
        for req in stepped:
            req.stats.seconds = now - req.started
            if req.finished:
                self._release(req)
        self.running = [r for r in self.running if not r.finished]
        return stepped

    def run(self) -> Iterator[Request]:
        """Step until everything finished, yielding each request as it finishes."""
        while self.has_unfinished:
            for req in self.step():
                if req.finished:
                    yield req

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: Sequence[SamplingParams],
        progress=None,
    ) -> list[RequestOutput]:
        reqs = [self.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
        try:
            for _ in self.run():
                if progress is not None:
                    progress.update(1)
        except BaseException:
            self.abort_all()
            raise
        return [r.output() for r in reqs]

    def _release(self, req: Request) -> None:
        if req.graph is not None:
            req.graph.free()
            req.graph = None
        self.method.release(req)

    def abort_all(self) -> None:
        for req in self.running:
            self._release(req)
        self.running.clear()
        self.waiting.clear()

    # -- helpers for methods ----------------------------------------------------------------
    def forward(
        self,
        appends: Sequence[Append],
        logit_rows: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, ForwardBatch]:
        batch = build_batch(appends, self.model.windows)
        logits, hidden = self.model.forward(batch, logit_rows, return_hidden)
        return logits, hidden, batch
