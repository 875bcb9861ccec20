"""Sampling parameters, logits -> processed probabilities, and seeded draws.

Acceptance rules of the speculative methods compare *processed* distributions (after
temperature, top-k, top-p and min-p, applied in that order as `transformers` does), so this module
returns the whole distribution, not only the sampled token. Temperature 0 is greedy: the
distribution is one-hot on the first maximal logit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from braid.errors import InvalidRequestError


@dataclass
class SamplingParams:
    """How to sample one request, with vLLM's names and meanings.

    temperature: 0 means greedy. top_k: 0 disables. top_p: in (0, 1]. min_p: in [0, 1], keep
    tokens with probability >= min_p * the top probability. seed: same seed, same output,
    whatever else is in the batch. stop: strings that end generation (not included in the text).
    max_total_tokens: multiverse only - all tokens across parallel paths (max_tokens bounds
    the critical path there); None = up to the context. logits_processors: callables
    `(generated_ids, logits) -> logits` applied to the raw logits before sampling, as in vLLM
    (methods "ar" and "multiverse"; in multiverse, generated_ids are those the token sees).
    """

    max_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)
    stop_token_ids: Sequence[int] = field(default_factory=tuple)
    ignore_eos: bool = False
    max_total_tokens: int | None = None
    logits_processors: Sequence[Callable[[list[int], torch.Tensor], torch.Tensor]] = field(
        default_factory=tuple
    )

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        if not self.temperature >= 0:
            raise InvalidRequestError(
                f"temperature must be >= 0 (0 = greedy), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequestError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise InvalidRequestError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.max_total_tokens is not None and self.max_total_tokens < 1:
            raise InvalidRequestError(
                f"max_total_tokens must be >= 1 or None, got {self.max_total_tokens}"
            )
        self.logits_processors = tuple(self.logits_processors)
        if any(not callable(f) for f in self.logits_processors):
            raise InvalidRequestError("logits_processors must be callables (ids, logits) -> logits")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def filters(self) -> bool:
        return self.top_k > 0 or self.top_p < 1 or self.min_p > 0


def process_logits(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """fp32 logits [N, V] -> the processed distributions [N, V], one row per params entry."""
    logits = logits.float()
    if params and all(not p.greedy and not p.filters for p in params):
        # the common case (a request's draft or verify rows): one softmax for all rows
        temps = {p.temperature for p in params}
        if len(temps) == 1:
            t = temps.pop()
            return torch.softmax(logits if t == 1 else logits / t, dim=-1)
        t = torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=logits.device)
        return torch.softmax(logits / t[:, None], dim=-1)
    probs = torch.empty_like(logits)
    for i, p in enumerate(params):  # rows are few; each row is vectorised over the vocabulary
        if p.greedy:
            probs[i] = 0.0
            probs[i, int(logits[i].argmax())] = 1.0
        elif not p.filters:
            probs[i] = torch.softmax(logits[i] / p.temperature, dim=-1)
        else:
            probs[i] = _filtered(logits[i] / p.temperature, p)
    return probs


def _filtered(scores: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    sorted_scores, order = scores.sort(descending=True)
    if p.top_k > 0:
        sorted_scores[p.top_k :] = float("-inf")
    sorted_probs = torch.softmax(sorted_scores, dim=-1)
    keep = torch.ones_like(sorted_probs, dtype=torch.bool)
    if p.top_p < 1:
        mass_before = sorted_probs.cumsum(0) - sorted_probs
        keep &= mass_before < p.top_p
    if p.min_p > 0:
        keep &= sorted_probs >= p.min_p * sorted_probs[0]
    keep[0] = True
    sorted_scores = sorted_scores.masked_fill(~keep, float("-inf"))
    out = torch.empty_like(scores)
    out[order] = torch.softmax(sorted_scores, dim=-1)
    return out


def make_generator(seed: int | None) -> torch.Generator:
    """A per-request generator: seeded when asked, else from the global torch RNG."""
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,))))
    return g


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token from a distribution [V] by inverse CDF with a uniform from `generator`."""
    u = torch.rand((), generator=generator, dtype=torch.float64)
    cdf = probs.double().cumsum(0)
    return min(int(torch.searchsorted(cdf, u * cdf[-1], right=True)), probs.shape[0] - 1)
