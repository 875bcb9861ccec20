"""A request's state while it runs, its incremental detokenizer and its finished output.

One prompt with `SamplingParams.n` > 1 becomes n `Request`s, one per sample, that share a
`samples` list: each is scheduled, batched and cached like any request (the engine copies the
prompt's cached rows from a running sibling instead of recomputing them), and the first one's
`output()` gathers all n as vLLM's `RequestOutput.outputs`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from braid.cache import TokenGraph
from braid.device import HOST
from braid.errors import InvalidRequestError
from braid.model.tokenizer import Tokenizer
from braid.sampling import SamplingParams, TokenLogprob, make_generator, token_logprobs


@dataclass
class RequestStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    passes: int = 0  # large-model passes this request took part in
    seconds: float = 0.0
    draft_tokens: int = 0  # proposed by a drafter (speculative methods)
    accepted_tokens: int = 0  # of those, kept by the acceptance rule and emitted
    draft_passes: int = 0  # small-model passes
    # multiverse: the longest chain of positions, forks, paths, refused forks, what went wrong
    critical_path: int = 0
    blocks: int = 0
    paths: int = 0
    fallbacks: int = 0
    warnings: list[str] = field(default_factory=list)
    cached_prompt_tokens: int = 0  # prompt rows copied from a sibling sample, not recomputed
    drafts: int = 0  # verify passes that had drafted tokens (vLLM's spec_decode_num_drafts)
    accepted_per_pos: list[int] = field(default_factory=list)  # [k]: drafts whose token k stuck

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def parallelism(self) -> float:
        """Generated tokens per step of the critical path (1.0 for sequential decoding)."""
        return self.generated_tokens / self.critical_path if self.critical_path else 1.0

    @property
    def tokens_per_pass(self) -> float:
        return self.generated_tokens / self.passes if self.passes else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "passes": self.passes,
            "seconds": round(self.seconds, 4),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "tokens_per_pass": round(self.tokens_per_pass, 3),
            **(
                {"cached_prompt_tokens": self.cached_prompt_tokens}
                if self.cached_prompt_tokens
                else {}
            ),
            **(
                {
                    "draft_tokens": self.draft_tokens,
                    "accepted_tokens": self.accepted_tokens,
                    "acceptance_rate": round(self.acceptance_rate, 3),
                    "draft_passes": self.draft_passes,
                }
                if self.draft_tokens
                else {}
            ),
            **(
                {
                    "critical_path": self.critical_path,
                    "parallelism": round(self.parallelism, 3),
                    "blocks": self.blocks,
                    "paths": self.paths,
                    "fallbacks": self.fallbacks,
                    "warnings": list(self.warnings),
                }
                if self.critical_path
                else {}
            ),
        }


@dataclass
class CompletionOutput:
    """One sample of a prompt (vLLM's `CompletionOutput`)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (eos, stop token or stop string), "length", "abort", "error"
    stats: RequestStats = field(default_factory=RequestStats)
    logprobs: list[TokenLogprob] | None = None  # one per token id, when params.logprobs is set


@dataclass
class RequestOutput:
    """Everything generated for one prompt: `outputs` holds its `SamplingParams.n` samples in
    index order. `text`, `token_ids`, `finish_reason` and `stats` are those of sample 0, so
    code written for n = 1 reads the same fields it always did."""

    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str:
        return self.outputs[0].finish_reason

    @property
    def stats(self) -> RequestStats:
        return self.outputs[0].stats


def sample_seed(seed: int | None, index: int) -> int | None:
    """The seed of sample `index` of a prompt: `seed + index`, vLLM's rule, so sample 0 is the
    n = 1 output and sample i can be reproduced alone with seed + i; None stays unseeded."""
    return None if seed is None else seed + index


class Detokenizer:
    """Text deltas that never split a multi-byte character (vLLM's prefix/read offsets).

    A few prompt tokens are decoded as context so that tokenizers which drop a leading space at
    the start of a decode still produce the right first word.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-4:])
        self.prefix = 0
        self.read = len(self.ids)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""


class Request:
    def __init__(
        self,
        request_id: int,
        prompt: str | None,
        prompt_ids: list[int],
        params: SamplingParams,
        tokenizer: Tokenizer,
        eos_token_ids: Sequence[int],
        max_context: int,
        index: int = 0,
        samples: list[Request] | None = None,
        device: torch.device = HOST,
    ):
        """`index`: which sample of its prompt this is; `samples`: the list all samples of the
        prompt share (None: a new list, this request's the first); `device`: the engine's, where
        the request's generator draws."""
        self.id = request_id
        self.prompt = prompt
        self.prompt_ids = prompt_ids
        self.params = params
        self.index = index
        self.samples: list[Request] = samples if samples is not None else []
        self.samples.append(self)
        if params.logits_processors:  # a processor that raises fails this request alone
            guarded = replace(
                params, logits_processors=[self._guard(f) for f in params.logits_processors]
            )
            guarded.unset, params = params.unset, guarded
            self.params = params
        self.generator: torch.Generator = make_generator(sample_seed(params.seed, index), device)
        self.graph: TokenGraph | None = None
        self.output_ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.text = ""
        self._stop_from = 0  # where stop strings are looked for (min_tokens moves it)
        self.emitted = 0  # characters of `text` already streamed
        # text pieces to stream, for methods whose output is not a growing prefix (multiverse)
        self.chunks: list[str] | None = None
        # multiverse: each top-level path as it ended ({block, label, text}), in that order
        self.paths: list[dict] = []
        self.finish_reason: str | None = None  # "stop", "length", "abort" or "error"
        self.error: Exception | None = None  # why it failed ("error"); its peers ran on
        self.stats = RequestStats(prompt_tokens=len(prompt_ids))
        self.started: float | None = None
        self._detok = Detokenizer(tokenizer, prompt_ids)
        self._stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            self._stop_ids |= set(eos_token_ids)
        self._limit = min(params.max_tokens, max_context - len(prompt_ids))

    def _guard(self, proc: Callable) -> Callable:
        """`proc` with its failures (an exception, a result that is not a logits row) recorded
        on this request instead of raised in the middle of its peers' batch."""

        def run(ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            if self.error is not None:
                return logits
            try:
                out = proc(ids, logits)
                if not isinstance(out, torch.Tensor) or out.shape != logits.shape:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise InvalidRequestError(
                        f"a logits processor must return a tensor of shape "
                        f"{tuple(logits.shape)}, got {got}"
                    )
            except Exception as err:
                self.error = err
                return logits
            return out

        return run

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def stop_ids(self) -> set[int]:
        """Token ids that end the request (eos unless ignored, and stop_token_ids)."""
        return self._stop_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def remaining(self) -> int:
        """Tokens this request may still emit (max_tokens and the context both count)."""
        return self._limit - len(self.output_ids)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def accept_verified(
        self, kept: Sequence[int], nxt: int, proposed: int, rows: torch.Tensor | None = None
    ) -> None:
        """One verify pass of a drafting method: `kept` of `proposed` drafted tokens stay, then
        `nxt`. Only drafted tokens that come out count as accepted (a stop may end it early).
        `rows`: the penalised target logits that scored them (see `accept`)."""
        self.stats.passes += 1
        self.stats.draft_tokens += proposed
        emitted = self.accept([*kept, nxt], rows)
        accepted = min(len(kept), emitted)
        self.stats.accepted_tokens += accepted
        if proposed:
            self.stats.drafts += 1
            per_pos = self.stats.accepted_per_pos
            per_pos.extend([0] * (proposed - len(per_pos)))
            for k in range(accepted):
                per_pos[k] += 1

    def accept(self, tokens: Sequence[int], rows: torch.Tensor | None = None) -> int:
        """Append sampled tokens in order until one finishes the request; returns how many stuck.

        `rows` [len(tokens), V]: the penalised target logits that scored each token, from which
        a request that asked for logprobs gets them (every method but multiverse passes them).
        Before `min_tokens` tokens are out, neither stop ids nor stop strings end it."""
        if self.logprobs is not None and rows is None:
            raise InvalidRequestError("this method does not report logprobs")
        taken = 0
        for t in tokens:
            self.output_ids.append(int(t))
            taken += 1
            piece = self._detok.push(int(t))
            self.text += piece
            early = len(self.output_ids) < self.params.min_tokens
            if len(self.output_ids) == self.params.min_tokens and self.params.stop:
                # stop strings are looked for from here on (vLLM's rule), straddling included
                longest = max(len(s) for s in self.params.stop)
                self._stop_from = max(0, len(self.text) - len(piece) - longest + 1)
            if int(t) in self._stop_ids and not early:
                self.finish_reason = "stop"
            elif self.params.stop and not early and self._trim_stop_string():
                self.finish_reason = "stop"
            elif len(self.output_ids) >= self._limit:
                self.finish_reason = "length"
            if self.finished:
                break
        if self.logprobs is not None:
            self.logprobs += token_logprobs(rows[:taken], tokens[:taken], self.params)
        self.stats.generated_tokens = len(self.output_ids)
        return taken

    def _trim_stop_string(self) -> bool:
        hits = [i for i in (self.text.find(s, self._stop_from) for s in self.params.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
        return bool(hits)

    def snapshot(self) -> tuple:
        """Everything a step may change (outputs, text, stats, the draw, the cached rows), so a
        step that fails can be undone with `restore` as if it had never run."""
        stats = replace(
            self.stats,
            warnings=list(self.stats.warnings),
            accepted_per_pos=list(self.stats.accepted_per_pos),
        )
        chunks = None if self.chunks is None else list(self.chunks)
        detok = (len(self._detok.ids), self._detok.prefix, self._detok.read)
        graph = None if self.graph is None else self.graph.checkpoint()
        state = self.generator.get_state()
        return (
            len(self.output_ids),
            None if self.logprobs is None else len(self.logprobs),
            self._stop_from,
            self.text,
            self.finish_reason,
            stats,
            chunks,
            detok,
            graph,
            state,
            len(self.paths),
        )

    def restore(self, snap: tuple) -> None:
        outputs, logprobs, self._stop_from, self.text, self.finish_reason = snap[:5]
        self.stats, self.chunks, detok, graph, state, paths = snap[5:]
        del self.paths[paths:]
        del self.output_ids[outputs:]
        if logprobs is not None:
            del self.logprobs[logprobs:]
        ids, self._detok.prefix, self._detok.read = detok
        del self._detok.ids[ids:]
        if graph is not None and self.graph is not None:
            self.graph.rollback(graph)
        self.generator.set_state(state)

    def take_delta(self) -> str:
        """New text since the last call; holds back a tail that could still start a stop string."""
        if self.chunks is not None:
            delta, self.chunks = "".join(self.chunks), []
            return delta
        end = len(self.text)
        if not self.finished and self.params.stop:
            end -= max(len(s) for s in self.params.stop) - 1
        if end <= self.emitted:
            return ""
        delta, self.emitted = self.text[self.emitted : end], end
        return delta

    def completion(self) -> CompletionOutput:
        return CompletionOutput(
            index=self.index,
            text=self.text,
            token_ids=list(self.output_ids),
            finish_reason=self.finish_reason or "length",
            stats=self.stats,
            logprobs=None if self.logprobs is None else list(self.logprobs),
        )

    def output(self) -> RequestOutput:
        """The prompt's output with every sample (as far as each has come)."""
        first = self.samples[0]
        return RequestOutput(
            request_id=first.id,
            prompt=first.prompt,
            prompt_token_ids=first.prompt_ids,
            outputs=[s.completion() for s in self.samples],
        )
