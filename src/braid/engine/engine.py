"""The step loop: admit waiting requests, let the method advance the running ones, retire them.

Continuous batching: a request leaves as soon as it finishes and a waiting one takes its slot in
the next step, whatever the others are doing.

Samples of one prompt (`SamplingParams.n`) are separate requests with their own slots, seeds and
method state, so every method runs them unchanged. They share the prompt's prefill: a sample
admitted while a sibling runs gets the sibling's cached prompt rows (all but the last prompt
token, whose logits it computes itself) copied into its slot; one that would start beside a
sibling still waiting for its first pass waits a step for it; and a sample that finishes hands
its slot, cut back to those rows, to a waiting sibling. So the prompt is computed once however
short the samples are. The draft model of the draft methods still reads it once per sample.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence

import torch

from braid.engine.request import Request, RequestOutput
from braid.errors import BraidWarning, InvalidRequestError
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
        self.device = model.device  # methods create their tensors here
        self.tokenizer = tokenizer
        self.method = method
        self.max_batch = max_batch
        self.max_context = model.config.max_position_embeddings
        # cached rows may outnumber positions when a method keeps parallel branches (multiverse)
        rows = self.max_context * getattr(method, "rows_per_position", Method.rows_per_position)
        self.pool = model.new_pool(max_batch, rows)
        self.eos_token_ids = model.config.eos_token_ids or tokenizer.eos_token_ids
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._next_id = 0

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, prompt: str | Sequence[int], params: SamplingParams) -> Request:
        """Queue `params.n` samples of `prompt`; returns the first (its `samples` holds all)."""
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
        if "max_tokens" not in params.unset and len(ids) + params.max_tokens > self.max_context:
            # cut to what fits, and said (in vLLM's words, which it uses to refuse the request)
            warnings.warn(
                f"This model's maximum context length is {self.max_context} tokens; the prompt "
                f"has {len(ids)} and max_tokens is {params.max_tokens}: generation "
                f"stops after {self.max_context - len(ids)} tokens",
                BraidWarning,
                stacklevel=3,
            )
        if params.logits_processors and not getattr(
            self.method, "supports_logits_processors", Method.supports_logits_processors
        ):
            raise InvalidRequestError(
                f"logits_processors are supported by methods 'ar' and 'multiverse', "
                f"not {self.method.name!r}"
            )
        check = getattr(self.method, "check", None)
        if check is not None:
            check(self, params)
        samples: list[Request] = []
        for index in range(params.n):
            req = Request(
                self._next_id,
                text,
                ids,
                params,
                self.tokenizer,
                self.eos_token_ids,
                self.max_context,
                index=index,
                samples=samples,
                device=self.device,
            )
            self._next_id += 1
            self.waiting.append(req)
        return samples[0]

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> list[Request]:
        """One scheduling step; returns the requests that advanced (finished ones included)."""
        self._admit()
        stepped = list(self.running)
        if stepped:
            self._advance(stepped)
        now = time.perf_counter()
        for req in stepped:
            req.stats.seconds = now - req.started
            if req.finished:
                self._hand_over(req, now)
                self._release(req)
        self.running = [r for r in self.running if not r.finished]
        return stepped

    def _advance(self, reqs: list[Request]) -> None:
        """`method.step`, undone if it raises: every request gets its state and cached rows
        back, drops what the method held for it (drafts and the like are rebuilt from the
        request), and steps again alone, so only a request that fails by itself fails."""
        saved = [(r, r.snapshot()) for r in reqs]
        try:
            self.method.step(self, reqs)
        except Exception as err:
            for r, snap in saved:
                r.restore(snap)
                self.method.release(r)
            if len(reqs) == 1 or not getattr(self.method, "rebuilds_state", True):
                # a method whose per-request state cannot be rebuilt loses the whole step
                for r in reqs:
                    self._fail(r, err)
                return
            for r in reqs:
                if not r.finished:  # a failing sibling may have ended it already
                    self._advance([r])
            return
        for r, snap in saved:
            if r.error is not None and r.finish_reason != "error":  # its logits processor failed
                r.restore(snap)
                self._fail(r, r.error)

    def _fail(self, req: Request, err: Exception) -> None:
        """End every sample of `req`'s prompt with `err`; the engine frees them."""
        for s in req.samples:
            if s.finish_reason in (None, "error"):
                s.error = s.error or err
                s.finish_reason = "error"
        self._drop_waiting(req)

    def _drop_waiting(self, req: Request) -> None:
        if any(s in self.waiting for s in req.samples):
            self.waiting = deque(r for r in self.waiting if r.samples is not req.samples)

    def abort(self, req: Request) -> None:
        """Stop every sample of `req`'s prompt now, keeping what they produced (finish_reason
        "abort"); their cache slots and the method's state for them are freed at once."""
        self._drop_waiting(req)
        for s in req.samples:
            if not s.finished:
                s.finish_reason = "abort"
            if s in self.running:
                self._release(s)
        self.running = [r for r in self.running if r.samples is not req.samples]

    def _admit(self) -> None:
        """Fill free slots from the queue in order, passing over samples that wait a step for a
        sibling's first pass (they keep their place)."""
        passed: list[Request] = []
        while self.waiting and len(self.running) < self.max_batch:
            req = self.waiting.popleft()
            shared = _shared_rows(req)
            running = [s for s in req.samples if s.graph is not None] if shared else []
            source = next((s for s in running if s.graph.length >= shared), None)
            if running and source is None:
                passed.append(req)
                continue
            req.graph = self.pool.new_graph()
            if source is not None:
                req.graph.copy_prefix(source.graph, shared)
                req.stats.cached_prompt_tokens = shared
            req.started = time.perf_counter()
            self.running.append(req)
        self.waiting.extendleft(reversed(passed))

    def _hand_over(self, req: Request, now: float) -> None:
        """A finished sample's slot, cut back to its prompt rows, goes to a waiting sibling."""
        heir = next((s for s in req.samples if s.started is None and not s.finished), None)
        if heir is None or req.graph is None:
            return
        self.waiting.remove(heir)
        heir.graph, req.graph = req.graph, None
        heir.graph.restart(_shared_rows(heir))
        heir.stats.cached_prompt_tokens = heir.graph.length
        heir.started = now
        self.running.append(heir)

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
        """One output per prompt, in order; `progress` advances once per finished sample."""
        reqs = [self.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
        try:
            for req in self.run():
                if req.error is not None:
                    raise req.error
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


def _shared_rows(req: Request) -> int:
    """Prompt rows a sample can take from a sibling: all but the last, whose logits it needs."""
    return len(req.prompt_ids) - 1
