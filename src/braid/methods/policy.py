"""Batch-aware draft lengths (`gamma="auto"`): per request and step, the γ (0 allowed) that
maximises the expected tokens per second of the whole batch.

The idea is SmartSpec's goodput (Liu et al. 2024) with a measured cost model, as dynamic
speculation lookahead (Mamou et al. 2024) does per request: a step emits, in expectation,
E_i(γ_i) = 1 + α_i + ... + α_i^γ_i tokens for request i (α_i: its running per-token acceptance,
each drafted token kept with probability α_i once the ones before it are), and costs

    time(γ) = d0 P + d1 w G + verify(B + w G),     G = Σ γ_i, L = max γ_i,

where `verify(n)` is the measured time of one target pass over n tokens (`costs.PassCost`; B
of them are the requests' pending inputs, prompts included), d0 + d1 m that of a draft pass
over m tokens (`costs.AffineCost`; zero for prompt lookup), P the draft passes (L for a draft
model, which drafts a token per pass; 1 for CP heads, which draft every position in one pass
through the unembedding, and whose cost at batch 8 is what made them lose to `ar` unmodelled)
and w the tokens per drafted position (an MTAD tree's beams, else 1). On a CPU whose verify
pass is compute-bound at batch 8, a drafted token costs nearly what an `ar` token does, and the
policy stops drafting for requests whose α does not pay for it: γ = 0 makes the step an `ar`
step.

The objective Σ E_i / time is maximised exactly: time depends on γ only through (L, G), and for
a fixed L and G, Σ E_i is separable and concave in each γ_i, so adding drafted tokens one at a
time to the request with the largest gain α_i^(γ_i + 1) (capped at L) is optimal; `choose`
scans every L and G.

A draft length changes which uniforms a sampled request's draws use, so a timing-driven γ would
make a seed's tokens depend on the machine and the batch (every γ keeps the exact rules exact,
so only reproducibility is at stake). Seeded sampled requests therefore take the γ the policy
gives them alone under a fixed reference cost model (their own acceptance still adapts it);
greedy and unseeded requests share the batch's measured optimum.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from braid.methods.costs import AffineCost, PassCost
from braid.methods.verify import Scored, score_chains

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request

MAX_GAMMA = 8  # longest draft the policy considers
PRIOR_ALPHA, PRIOR_WEIGHT = 0.5, 2.0  # a new request's acceptance: 0.5, worth 2 observations
DECAY = 0.9  # per observation: a request's acceptance follows its recent text
IDLE_DECAY = 0.98  # per step without a draft: back towards the prior
# a draft must promise this much more than an `ar` step: the timings it is judged by are noisy
# (a few % per table entry), and at batch 8 marginal drafts measured as losses (their catch-up
# passes are not in the model)
MARGIN = 0.05

Verify = Callable[[int], float]  # seconds of a target pass over n tokens
# seeded sampled requests: a fixed model (a pass over n tokens costs 1 + (n - 1)/32 passes
# over one, a draft pass a tenth of one), so their draft lengths never depend on timings
REFERENCE_VERIFY = PassCost()
REFERENCE_DRAFT = (0.1, 0.0)


def expected_tokens(alpha: float, gamma: int) -> float:
    """Tokens one step emits in expectation: 1 + α + ... + α^γ (the drawn token included)."""
    return sum(alpha**j for j in range(gamma + 1))


@dataclass
class Acceptance:
    """A request's running per-token acceptance: kept / (kept + rejections), decayed."""

    kept: float = PRIOR_ALPHA * PRIOR_WEIGHT
    seen: float = PRIOR_WEIGHT

    def record(self, proposed: int, kept: int) -> None:
        if proposed <= 0:
            return
        rejected = 1 if kept < proposed else 0  # one draw per kept token, then the failure
        self.kept = DECAY * self.kept + kept
        self.seen = DECAY * self.seen + kept + rejected

    def idle(self) -> None:
        """A step without a draft: drift back towards the prior, so a request whose text
        turned predictable is tried again."""
        self.kept = IDLE_DECAY * self.kept + (1 - IDLE_DECAY) * PRIOR_ALPHA * PRIOR_WEIGHT
        self.seen = IDLE_DECAY * self.seen + (1 - IDLE_DECAY) * PRIOR_WEIGHT

    @property
    def alpha(self) -> float:
        return min(self.kept / self.seen, 1 - 1e-6)


def draft_passes(longest: int, one_pass: bool) -> int:
    """Draft passes of a step whose longest draft is `longest`: one per drafted position, or
    a single one (`one_pass`: CP heads) whenever anything is drafted."""
    return min(longest, 1) if one_pass else longest


def step_seconds(
    total: int,
    longest: int,
    base: int,
    verify: Verify,
    draft: tuple[float, float] | None = None,
    width: int = 1,
    one_pass: bool = False,
) -> float:
    """The policy's model of one step's time: the draft passes (`draft_passes`) holding
    `total` drafted positions (`draft` = (d0, d1): per pass and per position, None: free), then
    the verify pass over `base + width * total` tokens."""
    seconds = verify(base + width * total)
    if draft is not None and longest:
        seconds += draft[0] * draft_passes(longest, one_pass) + draft[1] * width * total
    return seconds


def objective(
    alphas: Sequence[float],
    gammas: Sequence[int],
    base: int,
    verify: Verify,
    draft: tuple[float, float] | None = None,
    width: int = 1,
    one_pass: bool = False,
) -> float:
    """Expected tokens per second of one step (what `choose` maximises)."""
    tokens = sum(expected_tokens(a, g) for a, g in zip(alphas, gammas, strict=True))
    longest = max(gammas, default=0)
    return tokens / step_seconds(sum(gammas), longest, base, verify, draft, width, one_pass)


def choose(
    alphas: Sequence[float],
    caps: Sequence[int],
    base: int,
    verify: Verify,
    draft: tuple[float, float] | None = None,
    width: int = 1,
    one_pass: bool = False,
) -> list[int]:
    """γ per request (0 <= γ_i <= caps[i]) maximising `objective`, or all zeros unless the
    best draft beats that by `MARGIN`; ties go to shorter drafts.

    base: tokens the verify pass holds besides the drafts (every request's pending input).
    Every vector tried is scored with its own total and longest draft, and for the optimum's
    (L, G) the greedy vector scores at least as high, so the best vector tried is optimal."""
    n = len(alphas)
    costs = [verify(base + width * g) for g in range(sum(caps) + 1)]  # one lookup per size

    def seconds(total: int, longest: int) -> float:
        if not (draft and longest):
            return costs[total]
        extra = draft[0] * draft_passes(longest, one_pass) + draft[1] * width * total
        return costs[total] + extra

    plain = n / seconds(0, 0)  # an `ar` step
    best, best_value = [0] * n, 0.0
    for limit in range(1, max(caps, default=0) + 1):
        gammas, tokens, total, longest = [0] * n, float(n), 0, 0
        heap = [(-a, i) for i, (a, c) in enumerate(zip(alphas, caps, strict=True)) if c > 0]
        heapq.heapify(heap)
        while heap:  # add the drafted token with the largest expected gain α_i^(γ_i + 1)
            gain, i = heapq.heappop(heap)
            gammas[i] += 1
            tokens, total, longest = tokens - gain, total + 1, max(longest, gammas[i])
            if gammas[i] < min(caps[i], limit):
                heapq.heappush(heap, (-(alphas[i] ** (gammas[i] + 1)), i))
            value = tokens / seconds(total, longest)
            if value > best_value * (1 + 1e-12):
                best, best_value = list(gammas), value
    return best if best_value > plain * (1 + MARGIN) else [0] * n


@dataclass
class CostModel:
    """What the policy measures that belongs to the model and the machine, not to a batch:
    the target's pass times, and each method's draft pass times. An `LLM` keeps one for all
    its engines, so a `generate` call starts from what earlier calls measured instead of from
    the optimistic prior (a fresh table makes drafting look free until it has been timed; at
    batch 8, 64 tokens per request, spec went from 0.84x to 1.03x ar with it and `MARGIN`)."""

    verify: PassCost = field(default_factory=PassCost)
    drafts: dict[str, AffineCost] = field(default_factory=dict)

    def attach(self, method: object) -> None:
        """Point the method's policy (its `lengths`, when it has one) at these tables."""
        lengths = getattr(method, "lengths", None)
        if isinstance(lengths, DraftLengths):
            lengths.verify = self.verify
            lengths.draft = self.drafts.setdefault(method.name, AffineCost())


@dataclass
class DraftLengths:
    """What a speculative method asks each step: `gamma` fixed, or "auto" (this policy).

    `draft_cost`: whether drafting costs passes of a draft model (False for prompt lookup);
    `one_pass`: the draft is one pass whatever its length (CP heads);
    `width`: verify tokens per drafted position (the beams of an mtad tree)."""

    gamma: int | str = "auto"
    draft_cost: bool = True
    one_pass: bool = False
    width: int = 1
    max_gamma: int = MAX_GAMMA
    verify: PassCost = field(default_factory=PassCost)
    draft: AffineCost = field(default_factory=AffineCost)
    acceptance: dict[int, Acceptance] = field(default_factory=dict)

    @property
    def adaptive(self) -> bool:
        return self.gamma == "auto"

    @property
    def _shape(self) -> tuple[int, bool]:
        """(width, one_pass): how drafted positions turn into verify tokens and draft passes."""
        return self.width, self.one_pass

    @property
    def longest(self) -> int:
        """The longest draft a step may ask for."""
        return self.max_gamma if self.adaptive else int(self.gamma)

    def plan(self, requests: Sequence[Request], caps: Sequence[int]) -> list[int]:
        """γ per request of this step, each within its cap and its own
        `num_speculative_tokens`."""
        caps = [
            c
            if r.params.num_speculative_tokens is None
            else min(c, r.params.num_speculative_tokens)
            for r, c in zip(requests, caps, strict=True)
        ]
        base = sum(r.num_tokens - r.graph.length for r in requests)  # pending inputs
        pinned = [r.params.seed is not None and not r.params.greedy for r in requests]
        return self.choose([r.id for r in requests], caps, base, pinned)

    def timed_score(
        self,
        engine: Engine,
        requests: Sequence[Request],
        drafts: Sequence[Sequence[int]],
        return_hidden: bool = False,
    ) -> Scored:
        """`score_chains`, its time observed as a verify pass over its tokens."""
        tokens = sum(r.num_tokens - r.graph.length + len(d) for r, d in zip(requests, drafts))
        start = time.perf_counter()
        scored = score_chains(engine, requests, drafts, return_hidden)
        self.observe_verify(tokens, time.perf_counter() - start)
        return scored

    def choose(
        self,
        ids: Sequence[int],
        caps: Sequence[int],
        base: int,
        pinned: Sequence[bool] | None = None,
    ) -> list[int]:
        """γ per request id; `caps` bounds each (what it may still emit and the caches hold).

        `pinned` requests (seeded sampling) get the γ they would get alone under the reference
        cost model: their draws then depend on their own history only, so a seed gives the
        same tokens whatever runs beside them and however fast the machine is (a draft length
        changes which uniforms a draw uses). The others share what is left of the batch."""
        if not self.adaptive:
            return [min(int(self.gamma), c) for c in caps]
        caps = [min(c, self.max_gamma) for c in caps]
        pinned = pinned or [False] * len(ids)
        accs = [self.acceptance.setdefault(i, Acceptance()) for i in ids]
        gammas = [0] * len(ids)
        ref_draft = REFERENCE_DRAFT if self.draft_cost else None
        for j, acc in enumerate(accs):
            if pinned[j]:
                alone = choose([acc.alpha], [caps[j]], 1, REFERENCE_VERIFY, ref_draft, *self._shape)
                gammas[j] = alone[0]
        free = [j for j in range(len(ids)) if not pinned[j]]
        if free:
            held = base + self.width * sum(gammas)  # the pinned drafts are in the pass too
            draft = self.draft.coefficients() if self.draft_cost else None
            alphas, free_caps = [accs[j].alpha for j in free], [caps[j] for j in free]
            chosen = choose(alphas, free_caps, held, self.verify, draft, *self._shape)
            for j, g in zip(free, chosen):
                gammas[j] = g
        for acc, gamma, cap in zip(accs, gammas, caps):
            if cap and not gamma:
                acc.idle()
        return gammas

    def record(self, request_id: int, proposed: int, kept: int) -> None:
        if self.adaptive:
            self.acceptance.setdefault(request_id, Acceptance()).record(proposed, kept)

    def release(self, request_id: int) -> None:
        self.acceptance.pop(request_id, None)

    def observe_verify(self, tokens: int, seconds: float) -> None:
        self.verify.observe(tokens, seconds)

    def observe_draft(self, tokens: int, seconds: float) -> None:
        self.draft.observe(tokens, seconds)
