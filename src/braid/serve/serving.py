"""What the completion and chat routes do: prompt -> engine loop -> OpenAI-shaped responses.

One `Serving` per server. A request's prompts are tokenized and checked here (so a bad one is a
400 before any byte of a stream is sent), submitted to the engine loop, and their events turned
into a full response or SSE chunks. A client that goes away aborts its prompts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from braid.engine.request import RequestOutput, RequestStats
from braid.errors import BraidError, InvalidRequestError
from braid.llm import LLM
from braid.methods.config import MethodConfig
from braid.sampling import TokenLogprob
from braid.serve import protocol as P
from braid.serve.loop import Accepted, Done, EngineLoop, Failed, Piece, Stream

ROLES = ("system", "user", "assistant", "tool", "developer")


class NotFound(BraidError):
    """An unknown model (404)."""


@dataclass
class Serving:
    llm: LLM
    loop: EngineLoop
    model_name: str
    method: MethodConfig
    default_max_tokens: int | None = None  # for requests that give none (else the model's)

    @property
    def max_context(self) -> int:
        return self.loop.engine.max_context

    # -- checks ------------------------------------------------------------------------------
    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise NotFound(
                f"The model `{name}` does not exist: this server has `{self.model_name}`"
            )

    def _fit(self, ids: list[int], params, param: str):
        """vLLM's context-overflow refusal, in its words (clients match on them)."""
        ctx, n = self.max_context, len(ids)
        if n >= ctx:
            raise InvalidRequestError(
                f"This model's maximum context length is {ctx} tokens. However, your request has "
                f"{n} input tokens. Please reduce the length of the input {param}."
            )
        if "max_tokens" not in params.unset and n + params.max_tokens > ctx:
            raise InvalidRequestError(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{n + params.max_tokens} tokens ({n} in the {param}, {params.max_tokens} in "
                f"the completion). Please reduce the length of the {param} or completion."
            )

    def _ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.llm.tokenizer.encode(prompt)
        vocab = self.llm.model.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})")
        return list(prompt)

    @property
    def draft_limit(self) -> int:
        """The longest draft a step of this server's method makes (0: it never drafts)."""
        method = self.loop.engine.method
        lengths = getattr(method, "lengths", None) or getattr(
            getattr(method, "chain", None), "lengths", None
        )
        return 0 if lengths is None else lengths.longest

    def speculation(self, body: P.SamplingFields) -> tuple[int | None, dict]:
        """The request's draft cap (None: the method's own) and what the response echoes."""
        asked, limit = body.speculation, self.draft_limit
        if asked is None:
            return None, {"enabled": limit > 0, "num_speculative_tokens": limit}
        cap = 0 if not asked.enabled else min(limit, asked.num_speculative_tokens or limit)
        applied = {"enabled": cap > 0, "num_speculative_tokens": cap}
        if asked.num_speculative_tokens is not None:
            applied["requested"] = asked.num_speculative_tokens
        return cap, applied

    def _params(self, body: P.SamplingFields):
        cap, _ = self.speculation(body)
        params = body.to_sampling_params(cap).with_defaults(self.llm.generation_defaults)
        if "max_tokens" in params.unset and self.default_max_tokens is not None:
            unset = params.unset  # still unset: the context may cut it without a warning
            params = replace(params, max_tokens=self.default_max_tokens)
            params.unset = unset
        return params

    def chat_ids(self, messages: list[P.ChatMessage], add_generation_prompt: bool = True):
        conversation = [m.as_dict() for m in messages]
        bad = next((m["role"] for m in conversation if m["role"] not in ROLES), None)
        if bad is not None:
            raise InvalidRequestError(f"unknown message role {bad!r}: use one of {list(ROLES)}")
        return self.llm.chat_prompt(conversation, add_generation_prompt)

    # -- completions -------------------------------------------------------------------------
    async def completion(self, body: P.CompletionRequest, disconnected: Callable):
        self.check_model(body.model)
        params = self._params(body)
        prompts = [self._ids(p) for p in body.prompts()]
        for ids in prompts:
            self._fit(ids, params, "prompt")
        texts = [self.llm.tokenizer.decode(ids) for ids in prompts] if body.echo else None
        run = await self._start([(ids, params) for ids in prompts])
        rid, created = P.new_id("cmpl"), P.now()
        if body.stream:
            return self._completion_stream(run, body, rid, created, texts)
        outputs = await run.collect(disconnected)
        choices = [
            P.CompletionChoice(
                index=i * params.n + o.index,
                text=(texts[i] if texts else "") + o.text,
                logprobs=self._completion_logprobs(o.logprobs),
                finish_reason=o.finish_reason,
            ).model_dump()
            for i, out in enumerate(outputs)
            for o in out.outputs
        ]
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": self.model_name,
            "choices": choices,
            "usage": usage(outputs),
            **self.stats(outputs, body),
        }

    def _completion_stream(self, run, body, rid, created, texts) -> AsyncIterator[str]:
        n = run.streams[0].params.n

        def chunk(choices: list[dict], **extra) -> str:
            obj = {"id": rid, "object": "text_completion", "created": created}
            return sse({**obj, "model": self.model_name, "choices": choices, **extra})

        offsets: dict[tuple[int, int], int] = {}  # text_offset of each choice's next token

        def choice(tag: int, index: int, text: str, reason=None, logprobs=None) -> dict:
            lp = None
            if logprobs is not None:
                start = offsets.get((tag, index), 0)
                lp = self._completion_logprobs(logprobs, start)
                offsets[tag, index] = start + sum(map(len, lp["tokens"]))
            c = P.CompletionChoice(
                index=tag * n + index, text=text, logprobs=lp, finish_reason=reason
            )
            return c.model_dump()

        opening = []
        if texts:
            opening = [chunk([choice(t, j, texts[t]) for t in range(len(texts)) for j in range(n)])]

        def piece(event: Piece) -> str:
            c = choice(event.tag, event.index, event.text, event.finish_reason, event.logprobs)
            return chunk([c], **paths_field(event))

        return self._sse(run, body, opening, piece, chunk)

    # -- chat --------------------------------------------------------------------------------
    async def chat(self, body: P.ChatCompletionRequest, disconnected: Callable):
        self.check_model(body.model)
        ids = self.chat_ids(body.messages, body.add_generation_prompt)
        params = self.llm.chat_params(self._params(body))
        self._fit(ids, params, "messages")
        run = await self._start([(ids, params)])
        rid, created = P.new_id("chatcmpl"), P.now()
        if body.stream:
            return self._chat_stream(run, body, rid, created)
        outputs = await run.collect(disconnected)
        choices = [
            P.ChatChoice(
                index=o.index,
                message=P.ChatChoiceMessage(content=o.text),
                logprobs=self._chat_logprobs(o.logprobs),
                finish_reason=o.finish_reason,
            ).model_dump()
            for o in outputs[0].outputs
        ]
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": self.model_name,
            "choices": choices,
            "usage": usage(outputs),
            **self.stats(outputs, body),
        }

    def _chat_stream(self, run, body, rid, created) -> AsyncIterator[str]:
        def chunk(choices: list[dict], **extra) -> str:
            obj = {"id": rid, "object": "chat.completion.chunk", "created": created}
            return sse({**obj, "model": self.model_name, "choices": choices, **extra})

        def choice(index: int, delta: P.Delta, reason=None, logprobs=None) -> dict:
            c = P.ChatStreamChoice(index=index, delta=delta, finish_reason=reason)
            lp = self._chat_logprobs(logprobs)
            return c.model_dump(exclude_none=True) | {"logprobs": lp, "finish_reason": reason}

        def piece(event: Piece) -> str:
            delta = P.Delta(content=event.text) if event.text else P.Delta()
            c = choice(event.index, delta, event.finish_reason, event.logprobs)
            return chunk([c], **paths_field(event))

        n = run.streams[0].params.n
        opening = [chunk([choice(j, P.Delta(role="assistant", content="")) for j in range(n)])]
        return self._sse(run, body, opening, piece, chunk)

    async def _sse(
        self,
        run: Run,
        body: P.SamplingFields,
        opening: list[str],
        piece: Callable[[Piece], str],
        chunk: Callable[..., str],
    ) -> AsyncIterator[str]:
        """One stream: the opening chunks, a chunk per decoded piece, the final stats chunk (or
        one error chunk), then [DONE]; a client gone mid-stream aborts its prompts."""
        try:
            for c in opening:
                yield c
            async for event in run.events():
                if isinstance(event, Piece):
                    yield piece(event)
                elif isinstance(event, Failed):
                    yield sse(error_of(event.error))
                    break
            else:
                yield chunk([], **self._final(run, body))
            yield "data: [DONE]\n\n"
        finally:  # the client went away mid-stream: stop its prompts now
            run.abort()

    def _final(self, run: Run, body: P.SamplingFields) -> dict:
        """The last chunk: braid's stats, and usage when the client asked for it."""
        outputs = run.outputs()
        out = self.stats(outputs, body)
        if body.include_usage:
            out["usage"] = usage(outputs)
        return out

    # -- shared ------------------------------------------------------------------------------
    async def _start(self, prompts: list[tuple[list[int], object]]) -> Run:
        """Submit every prompt and wait until the engine took them all (or refused one)."""
        aloop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        streams = [
            Stream(ids, params, events, aloop, tag=i) for i, (ids, params) in enumerate(prompts)
        ]
        run = Run(self.loop, streams, events)
        for s in streams:
            self.loop.submit(s)
        await run.accepted()
        return run

    def stats(self, outputs: list[RequestOutput], body: P.SamplingFields) -> dict:
        """braid's per-response telemetry, and llama.cpp's `timings` draft counters."""
        samples = [o.stats for out in outputs for o in out.outputs]
        total = sum_stats(samples)
        braid = {
            "method": self.method.name,
            **({"gamma": self.method.gamma} if self.method.name != "ar" else {}),
            "speculation": self.speculation(body)[1],
            "drafts": total.drafts,
            "drafted": total.draft_tokens,
            "accepted": total.accepted_tokens,
            "passes": total.passes,
            "tokens_per_pass": round(total.tokens_per_pass, 3),
            "acceptance": round(total.acceptance_rate, 3),
            "choices": [s.as_dict() for s in samples],
        }
        if total.critical_path:
            braid |= {
                "paths": total.paths,
                "critical_path": total.critical_path,
                "parallelism": round(total.parallelism, 3),
            }
        if self.method.name == "multiverse":
            braid["trees"] = [tree(o.text) for out in outputs for o in out.outputs]
        timings = {
            "prompt_n": sum(len(out.prompt_token_ids) for out in outputs),
            "predicted_n": total.generated_tokens,
            "draft_n": total.draft_tokens,
            "draft_n_accepted": total.accepted_tokens,
        }
        return {"braid": braid, "timings": timings}

    def _token(self, token_id: int) -> str:
        return self.llm.tokenizer.decode([token_id], special=True)

    def _completion_logprobs(self, lps: list[TokenLogprob] | None, offset: int = 0):
        """OpenAI's completions shape: tokens, token_logprobs, top_logprobs, text_offset."""
        if lps is None:
            return None
        tokens = [self._token(lp.token_id) for lp in lps]
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": [finite(lp.logprob) for lp in lps],
            "top_logprobs": [{self._token(i): finite(v) for i, v in lp.top} for lp in lps],
            "text_offset": offsets,
        }

    def _chat_logprobs(self, lps: list[TokenLogprob] | None):
        """OpenAI's chat shape: content = [{token, logprob, bytes, top_logprobs}]."""
        if lps is None:
            return None

        def entry(token_id: int, value: float) -> dict:
            token = self._token(token_id)
            return {"token": token, "logprob": finite(value), "bytes": list(token.encode())}

        return {
            "content": [
                entry(lp.token_id, lp.logprob) | {"top_logprobs": [entry(i, v) for i, v in lp.top]}
                for lp in lps
            ]
        }


def finite(logprob: float) -> float:
    """JSON has no -inf: a token without mass reads -9999.0, as in vLLM and OpenAI."""
    return max(logprob, -9999.0)


def paths_field(event: Piece) -> dict:
    """Multiverse: the top-level paths that ended in this step, with their labels."""
    return {"braid": {"ended_paths": event.paths}} if event.paths else {}


class Run:
    """The streams of one HTTP request and the queue their events arrive on."""

    def __init__(self, loop: EngineLoop, streams: list[Stream], events: asyncio.Queue):
        self.loop, self.streams, self.queue = loop, streams, events
        self.done: dict[int, RequestOutput] = {}
        self._open = {s.tag for s in streams}

    async def accepted(self) -> None:
        waiting = set(self._open)
        early: list = []
        while waiting:
            event = await self.queue.get()
            if isinstance(event, Failed):
                self.abort()
                raise event.error
            if isinstance(event, Accepted):
                waiting.discard(event.tag)
            else:
                early.append(event)  # a fast prompt's pieces, kept for `events`
        for event in early:
            self.queue.put_nowait(event)

    async def events(self) -> AsyncIterator:
        """Pieces as they come, then nothing: a `Failed` ends it (after being yielded)."""
        try:
            while self._open:
                event = await self.queue.get()
                if isinstance(event, Done):
                    self.done[event.tag] = event.output
                    self._open.discard(event.tag)
                    continue
                yield event
                if isinstance(event, Failed):
                    return
        finally:  # the client went away (or a prompt failed): stop what still runs
            if self._open:
                self.abort()

    async def collect(self, disconnected: Callable) -> list[RequestOutput]:
        """Wait for every prompt's output; abort all if the client disconnects first."""
        try:
            while self._open:
                try:
                    event = await asyncio.wait_for(self.queue.get(), timeout=0.2)
                except asyncio.TimeoutError:
                    if await disconnected():
                        raise asyncio.CancelledError from None
                    continue
                if isinstance(event, Failed):
                    raise event.error
                if isinstance(event, Done):
                    self.done[event.tag] = event.output
                    self._open.discard(event.tag)
        finally:
            if self._open:
                self.abort()
        return self.outputs()

    def outputs(self) -> list[RequestOutput]:
        return [self.done[s.tag] for s in self.streams]

    def abort(self) -> None:
        for s in self.streams:
            if s.tag in self._open:
                self.loop.abort(s)
        self._open.clear()


def sum_stats(samples: list[RequestStats]) -> RequestStats:
    total = RequestStats()
    for s in samples:
        total = replace(
            total,
            generated_tokens=total.generated_tokens + s.generated_tokens,
            passes=total.passes + s.passes,
            drafts=total.drafts + s.drafts,
            draft_tokens=total.draft_tokens + s.draft_tokens,
            accepted_tokens=total.accepted_tokens + s.accepted_tokens,
            critical_path=max(total.critical_path, s.critical_path),
            paths=total.paths + s.paths,
        )
    return total


def tree(text: str) -> dict:
    """A Multiverse answer's forks: per block (text order, nested ones included) the outline
    and path labels, or why the text does not parse."""
    from braid.multiverse.grammar import GrammarError, parse

    try:
        blocks = parse(text).blocks()
    except GrammarError as e:
        return {"error": str(e)}
    return {
        "blocks": [
            {"outlines": [o.label for o in b.outlines], "paths": [p.label for p in b.paths]}
            for b in blocks
        ]
    }


def usage(outputs: list[RequestOutput]) -> dict:
    prompt = sum(len(out.prompt_token_ids) for out in outputs)
    completion = sum(len(o.token_ids) for out in outputs for o in out.outputs)
    return P.Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    ).model_dump()


def status_of(err: Exception) -> int:
    from braid.serve.loop import Unavailable

    if isinstance(err, NotFound):
        return 404
    if isinstance(err, Unavailable):
        return 503
    if isinstance(err, BraidError):
        return 400
    return 500


def error_of(err: Exception) -> dict:
    code = status_of(err)
    message = str(err) if code != 500 else f"internal error: {type(err).__name__}: {err}"
    return P.error_body(message, code)


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
