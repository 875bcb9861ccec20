"""Prometheus metrics under vLLM's names, so dashboards and tools written for vLLM read braid.

Only the engine loop thread updates them (per step, from each request's `RequestStats`); the
`/metrics` route only renders. A registry per server keeps test servers in one process apart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.serve.loop import Stream

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)


class Metrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        r, labels = self.registry, {"model_name": model_name}

        def counter(name: str, doc: str, extra: Sequence[str] = ()):
            c = Counter(name, doc, [*labels, *extra], registry=r)
            return c if extra else c.labels(**labels)

        def gauge(name: str, doc: str):
            return Gauge(name, doc, list(labels), registry=r).labels(**labels)

        def histogram(name: str, doc: str):
            h = Histogram(name, doc, list(labels), buckets=LATENCY_BUCKETS, registry=r)
            return h.labels(**labels)

        self._labels = labels
        self.running = gauge("vllm:num_requests_running", "Requests in the running batch.")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting for a slot.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "Share of the KV cache rows in use.")
        self.slots = gauge("braid:kv_cache_slots_used", "Target KV cache slots held.")
        self.draft_slots = gauge("braid:draft_cache_slots_used", "Draft KV cache slots held.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens admitted.")
        self.generation_tokens = counter("vllm:generation_tokens", "Tokens generated.")
        self.success = counter(
            "vllm:request_success", "Finished requests by finish reason.", ["finished_reason"]
        )
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token.")
        self.itl = histogram("vllm:inter_token_latency_seconds", "Time between token steps.")
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Request latency.")
        self.drafts = counter("vllm:spec_decode_num_drafts", "Verify passes with a draft.")
        self.draft_tokens = counter("vllm:spec_decode_num_draft_tokens", "Drafted tokens.")
        self.accepted = counter("vllm:spec_decode_num_accepted_tokens", "Accepted draft tokens.")
        self.accepted_per_pos = counter(
            "vllm:spec_decode_num_accepted_tokens_per_pos",
            "Accepted draft tokens by position in the draft.",
            ["position"],
        )

    # -- updates (the loop thread) ----------------------------------------------------------
    def add(self, deltas: Sequence[int], per_pos: Sequence[int]) -> None:
        """Counter increments of one sample: tokens, drafts, draft tokens, accepted tokens."""
        tokens, drafts, drafted, accepted = deltas
        for metric, value in zip(
            (self.generation_tokens, self.drafts, self.draft_tokens, self.accepted),
            (tokens, drafts, drafted, accepted),
        ):
            if value:
                metric.inc(value)
        for position, value in enumerate(per_pos):
            if value:
                self.accepted_per_pos.labels(**self._labels, position=str(position)).inc(value)

    def token_step(self, stream: Stream, now: float) -> None:
        if stream.last_token is None:
            self.ttft.observe(now - stream.arrived)
        else:
            self.itl.observe(now - stream.last_token)
        stream.last_token = now

    def finished(self, stream: Stream, reason: str | None) -> None:
        self.success.labels(**self._labels, finished_reason=reason or "length").inc()
        self.e2e.observe(time.perf_counter() - stream.arrived)

    def gauges(self, engine: Engine) -> None:
        self.running.set(len(engine.running))
        self.waiting.set(len(engine.waiting))
        pool = engine.pool
        self.slots.set(pool.live_slots)
        self.kv_usage.set(pool.used_tokens() / (pool.max_slots * pool.max_capacity))
        drafter = getattr(engine.method, "drafter", None)
        draft_pool = getattr(drafter, "pool", None)
        self.draft_slots.set(draft_pool.live_slots if draft_pool is not None else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
