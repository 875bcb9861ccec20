"""The engine loop: the only thread that touches the `Engine`.

HTTP handlers (on the asyncio event loop) `submit` a prompt and read its events from an
asyncio queue; `abort` stops it. Both only post a command to the loop's inbox, so requests from
every connection join the same batches (continuous batching across connections), and each
stream gets its tokens as soon as the step that decoded them ends. Nothing a request does can
stop the loop: the engine fails a bad request alone, and anything else fails the requests of
that step with their error while the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from braid.engine.engine import Engine
from braid.engine.request import Request, RequestOutput
from braid.errors import BraidError
from braid.sampling import SamplingParams, TokenLogprob
from braid.serve.metrics import Metrics

log = logging.getLogger("braid.serve")


class Unavailable(BraidError):
    """The server cannot take the request now (its queue is full, or it is shutting down)."""


@dataclass
class Accepted:
    tag: int


@dataclass
class Failed:
    tag: int
    error: Exception


@dataclass
class Piece:
    """What one step produced for one sample: new text and token ids, and how it ended."""

    tag: int
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None = None  # one per token id, when the request asked
    paths: list[dict] = field(default_factory=list)  # multiverse: top-level paths that ended


@dataclass
class Done:
    tag: int
    output: RequestOutput


@dataclass(eq=False)
class Stream:
    """One prompt of an HTTP request: its events go to `events` (shared by the prompts of one
    request), each tagged with `tag`."""

    prompt_ids: list[int]
    params: SamplingParams
    events: asyncio.Queue
    aloop: asyncio.AbstractEventLoop
    tag: int = 0
    request: Request | None = None
    arrived: float = field(default_factory=time.perf_counter)
    last_token: float | None = None
    sent: dict[int, int] = field(default_factory=dict)  # sample index -> token ids sent
    paths_sent: dict[int, int] = field(default_factory=dict)  # sample index -> paths sent
    counted: dict[int, tuple] = field(default_factory=dict)  # sample index -> counters so far

    def put(self, event) -> None:
        try:
            self.aloop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # its event loop has closed (shutdown): nobody is listening
            pass


class EngineLoop:
    def __init__(self, engine: Engine, metrics: Metrics, max_waiting: int = 256):
        self.engine = engine
        self.metrics = metrics
        self.max_waiting = max_waiting
        self.draining = False
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[int, Stream] = {}  # first request id -> stream
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="braid-engine", daemon=True)

    # -- called from the event loop ---------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def submit(self, stream: Stream) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down: retry on another replica")
        self._inbox.put(("add", stream))

    def abort(self, stream: Stream) -> None:
        self._inbox.put(("abort", stream))

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    # -- the loop thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            self._read_inbox(block=not self.engine.has_unfinished)
            if self._stop:
                break
            if self.engine.has_unfinished:
                try:
                    stepped = self.engine.step()
                except Exception as err:  # not a request's fault: fail the step, keep serving
                    log.exception("engine step failed")
                    self._fail_all(err)
                    continue
                self._publish(stepped)
            self._gauges()
        self._fail_all(Unavailable("the server stopped before this request finished"))

    def _read_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while item is not None:
            kind, stream = item
            (self._add if kind == "add" else self._abort)(stream)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
        self._stop = self._stop or item is None

    def _add(self, stream: Stream) -> None:
        if len(self.engine.waiting) >= self.max_waiting:
            stream.put(Failed(stream.tag, Unavailable("the server is overloaded: retry later")))
            return
        try:
            req = self.engine.add_request(stream.prompt_ids, stream.params)
        except Exception as err:  # BraidError: bad input found by the engine or the method
            stream.put(Failed(stream.tag, err))
            return
        stream.request = req
        self._streams[req.id] = stream
        self.metrics.prompt_tokens.inc(len(stream.prompt_ids))
        stream.put(Accepted(stream.tag))

    def _abort(self, stream: Stream) -> None:
        req = stream.request
        if req is None or self._streams.pop(req.id, None) is None:
            return  # never admitted, or already over
        self.engine.abort(req)
        self._count(stream, req.samples)
        self.metrics.finished(stream, "abort")
        self._gauges()

    def _publish(self, stepped: Sequence[Request]) -> None:
        now = time.perf_counter()
        seen: dict[int, Stream] = {}
        timed: set[int] = set()
        for sample in stepped:
            stream = self._streams.get(sample.samples[0].id)
            if stream is None:
                continue
            sent = stream.sent.get(sample.index, 0)
            ids = sample.output_ids[sent:]
            stream.sent[sample.index] = len(sample.output_ids)
            if ids and id(stream) not in timed:  # once per stream and step, whatever its n
                timed.add(id(stream))
                self.metrics.token_step(stream, now)
            seen[id(stream)] = stream
            if sample.error is None:
                text = sample.take_delta()
                paths = sample.paths[stream.paths_sent.get(sample.index, 0) :]
                stream.paths_sent[sample.index] = len(sample.paths)
                if text or ids or paths or sample.finished:
                    lps = (
                        None if sample.logprobs is None else sample.logprobs[sent : sent + len(ids)]
                    )
                    reason = sample.finish_reason
                    stream.put(Piece(stream.tag, sample.index, text, ids, reason, lps, paths))
        for stream in seen.values():
            samples = stream.request.samples
            self._count(stream, samples)
            if all(s.finished for s in samples):
                del self._streams[samples[0].id]
                error = next((s.error for s in samples if s.error is not None), None)
                if error is not None:
                    stream.put(Failed(stream.tag, error))
                    self.metrics.finished(stream, "error")
                else:
                    stream.put(Done(stream.tag, stream.request.output()))
                    self.metrics.finished(stream, samples[0].finish_reason)

    def _count(self, stream: Stream, samples: Sequence[Request]) -> None:
        """Counters move by what each sample did since they last moved (aborts included)."""
        for s in samples:
            st = s.stats
            now = (len(s.output_ids), st.drafts, st.draft_tokens, st.accepted_tokens)
            per_pos = list(st.accepted_per_pos)
            before, before_pos = stream.counted.get(s.index, ((0, 0, 0, 0), []))
            self.metrics.add(
                [a - b for a, b in zip(now, before)],
                [a - (before_pos[k] if k < len(before_pos) else 0) for k, a in enumerate(per_pos)],
            )
            stream.counted[s.index] = (now, per_pos)

    def _fail_all(self, err: Exception) -> None:
        for stream in list(self._streams.values()):
            stream.put(Failed(stream.tag, err))
            self.metrics.finished(stream, "error")
        self._streams.clear()
        self.engine.abort_all()
        self._gauges()

    def _gauges(self) -> None:
        self.metrics.gauges(self.engine)
