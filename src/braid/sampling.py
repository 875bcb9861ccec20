"""Sampling parameters, penalties, logits -> processed probabilities, and seeded draws.

Acceptance rules of the speculative methods compare *processed* distributions (after
temperature, top-k, top-p and min-p, applied in that order as `transformers` does), so this module
returns the whole distribution, not only the sampled token. Temperature 0 is greedy: the
distribution is one-hot on the first maximal logit.

Penalties (`apply_penalties`) come before all of that, on the raw logits, and depend on what a
row has seen: every method passes each row its own history (a verify row that scores draft
position k sees the prompt, the output and draft[:k]), so the penalised distribution is the
target whatever method runs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any

import torch

from braid.device import HOST
from braid.errors import InvalidRequestError

# braid's values for the fields a caller leaves unset (None) and a model gives no default for
FALLBACKS: dict[str, Any] = {
    "max_tokens": 64,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
}
MAX_LOGPROBS = 20  # alternatives per token one request may ask for (OpenAI's limit)
# generation_config.json key -> SamplingParams field
GENERATION_KEYS = {
    "max_new_tokens": "max_tokens",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
}


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
    presence_penalty, frequency_penalty: in [-2, 2], OpenAI's: logit[v] -= presence * (c_v > 0)
    + frequency * c_v, c_v the count of v among the generated tokens. repetition_penalty: > 0,
    transformers' (CTRL): every token of the prompt or the output has its logit divided by it
    when positive, multiplied when not. Every method applies all three, exactly.
    n: samples of the prompt, returned as `RequestOutput.outputs`; sample i draws with seed + i
    (vLLM's rule; unseeded samples are independent draws) and all share the prompt's prefill.
    min_tokens: vLLM's: the stop tokens (eos unless ignored, stop_token_ids) get no mass and stop
    strings are not looked for until this many tokens are out. logprobs: None, or k >= 0: every
    output token's log-probability under the target's processed distribution (penalties,
    temperature and filters; a greedy request's is the penalised softmax at temperature 1, as
    OpenAI reports temperature 0) with the k most likely alternatives. num_speculative_tokens:
    braid's per-request cap on the draft length of a step (0: this request never drafts; None:
    the method's own); it changes speed only, never the distribution.

    max_tokens, temperature, top_k, top_p, min_p and repetition_penalty left unset (None) take
    braid's fallbacks (`FALLBACKS`: 64, 1.0, 0, 1.0, 0.0, 1.0) and are remembered in `unset`,
    so that `with_defaults` can give them a model's generation defaults instead.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)
    stop_token_ids: Sequence[int] = field(default_factory=tuple)
    ignore_eos: bool = False
    max_total_tokens: int | None = None
    logits_processors: Sequence[Callable[[list[int], torch.Tensor], torch.Tensor]] = field(
        default_factory=tuple
    )
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    n: int = 1
    min_tokens: int = 0
    logprobs: int | None = None
    num_speculative_tokens: int | None = None
    # names the caller left unset: not an argument, and two params that sample alike are equal
    unset: frozenset[str] = field(default=frozenset(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        unset = [name for name in FALLBACKS if getattr(self, name) is None]
        for name in unset:
            setattr(self, name, FALLBACKS[name])
        self.unset = frozenset(unset)
        self._check_types()
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
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise InvalidRequestError(f"n (samples per prompt) must be an int >= 1, got {self.n}")
        if self.min_tokens < 0:
            raise InvalidRequestError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.min_tokens > self.max_tokens:
            raise InvalidRequestError(
                f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})"
            )
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise InvalidRequestError(
                f"logprobs must be in [0, {MAX_LOGPROBS}] or None, got {self.logprobs}"
            )
        if self.num_speculative_tokens is not None and self.num_speculative_tokens < 0:
            raise InvalidRequestError(
                f"num_speculative_tokens must be >= 0 (0: no drafting) or None, "
                f"got {self.num_speculative_tokens}"
            )
        if self.max_total_tokens is not None and self.max_total_tokens < 1:
            raise InvalidRequestError(
                f"max_total_tokens must be >= 1 or None, got {self.max_total_tokens}"
            )
        self.logits_processors = tuple(self.logits_processors)
        if any(not callable(f) for f in self.logits_processors):
            raise InvalidRequestError("logits_processors must be callables (ids, logits) -> logits")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must be non-empty")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise InvalidRequestError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not self.repetition_penalty > 0:
            raise InvalidRequestError(
                f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty}"
            )

    def _check_types(self) -> None:
        """Wrong types are refused here, not found mid-batch by a kernel."""
        for name in ("max_tokens", "top_k", "n", "min_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidRequestError(f"{name} must be an integer, got {value!r}")
        for name in ("logprobs", "num_speculative_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InvalidRequestError(f"{name} must be an integer or None, got {value!r}")
        for name in (
            "temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
            "repetition_penalty",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRequestError(f"{name} must be a number, got {value!r}")
        ids = self.stop_token_ids
        if isinstance(ids, str | bytes) or any(
            isinstance(t, bool) or not isinstance(t, int) for t in ids
        ):
            raise InvalidRequestError(f"stop_token_ids must be integer token ids, got {ids!r}")

    def with_defaults(self, defaults: Mapping[str, Any]) -> SamplingParams:
        """A copy whose unset fields take a model's generation defaults.

        `defaults` has generation_config.json's keys (temperature, top_p, top_k, min_p,
        repetition_penalty, max_new_tokens; others are ignored, null means absent). As in vLLM
        only those keys count, except that `do_sample: false` (transformers' greedy) makes an
        unset temperature 0. Explicit values always win; the copy is validated like any other,
        and `unset` still names what the caller left open (so a model's default max_tokens is
        cut to the context silently, and a server's own default may still replace it).
        """
        values: dict[str, Any] = {}
        for key, name in GENERATION_KEYS.items():
            if name in self.unset and defaults.get(key) is not None:
                values[name] = type(FALLBACKS[name])(defaults[key])  # JSON may give 50.0 for 50
        if "temperature" in self.unset and defaults.get("do_sample") is False:
            values["temperature"] = 0.0
        out = replace(self, **values)
        out.unset = self.unset
        return out

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def filters(self) -> bool:
        return self.top_k > 0 or self.top_p < 1 or self.min_p > 0

    @property
    def penalised(self) -> bool:
        """Whether a row's logits depend on what it has seen (penalties, or min_tokens)."""
        return bool(
            self.presence_penalty
            or self.frequency_penalty
            or self.repetition_penalty != 1
            or self.min_tokens
        )


# what a logits row has seen: (prompt ids, generated ids before the token it scores)
History = tuple[Sequence[int], Sequence[int]]


def apply_penalties(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    histories: Sequence[History],
    stops: Sequence[Collection[int]] | None = None,
) -> torch.Tensor:
    """Raw logits [N, V] -> the penalised logits (fp32), each row with its params and history.

    Repetition first, then frequency and presence, as vLLM orders them; then a row that has seen
    fewer than min_tokens generated tokens gives its `stops` (the request's stop ids) no mass.
    Returns `logits` itself when no row has penalties, so callers pay nothing in the common
    case. Ids >= V (an id a smaller draft vocabulary cannot score) are skipped.
    """
    rows = [i for i, p in enumerate(params) if p.penalised]
    if not rows:
        return logits
    n, vocab = len(rows), logits.shape[1]
    out = logits[rows].float()
    counts = _counts([histories[i][1] for i in rows], n, vocab, out.device)
    reps = [params[i].repetition_penalty for i in rows]
    rep = torch.tensor(reps, device=out.device)[:, None]
    if any(r != 1 for r in reps):  # read on the host: no device synchronisation
        # the rows of one request share its prompt list: count each distinct prompt once
        unique = {id(histories[i][0]): histories[i][0] for i in rows}
        index = {key: j for j, key in enumerate(unique)}
        prompt_seen = _counts(list(unique.values()), len(unique), vocab, out.device) > 0
        which = torch.tensor([index[id(histories[i][0])] for i in rows], device=out.device)
        seen = (counts > 0) | prompt_seen[which]
        out = torch.where(seen, torch.where(out > 0, out / rep, out * rep), out)
    freq = torch.tensor([params[i].frequency_penalty for i in rows], device=out.device)[:, None]
    pres = torch.tensor([params[i].presence_penalty for i in rows], device=out.device)[:, None]
    out = out - (freq * counts + pres * (counts > 0))
    early = [(j, i) for j, i in enumerate(rows) if len(histories[i][1]) < params[i].min_tokens]
    if early and stops is None:
        raise ValueError("min_tokens needs the rows' stop ids")
    for j, i in early:
        ids = [t for t in stops[i] if t < vocab]
        if ids:
            out[j, ids] = float("-inf")
    if n == logits.shape[0]:
        return out
    return logits.float().index_copy(0, torch.tensor(rows, device=out.device), out)


def _counts(seqs: Sequence[Sequence[int]], n: int, vocab: int, device) -> torch.Tensor:
    """[n, vocab] fp32: how often each id occurs in each sequence (one scatter for all)."""
    # counted on the host, where the histories are, and copied to the logits' device once
    ids = torch.tensor(list(chain.from_iterable(seqs)), dtype=torch.long, device=HOST)
    lengths = torch.tensor([len(s) for s in seqs], device=HOST)
    row = torch.repeat_interleave(torch.arange(n, device=HOST), lengths)
    inside = ids < vocab
    counts = torch.zeros(n, vocab, device=HOST)
    counts.index_put_((row[inside], ids[inside]), torch.ones((), device=HOST), accumulate=True)
    return counts.to(device)


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


@dataclass
class TokenLogprob:
    """One output token's log-probability and the `k` most likely ids at its position."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(
    rows: torch.Tensor, tokens: Sequence[int], params: SamplingParams
) -> list[TokenLogprob]:
    """rows [n, V]: the penalised target logits that scored tokens[j] (row j) -> what
    `SamplingParams.logprobs` reports: log of the processed distribution the token was drawn
    from (a greedy request's: the penalised softmax, temperature 1)."""
    logits = rows.float()
    if params.greedy:
        logp = torch.log_softmax(logits, dim=-1)
    else:
        logp = process_logits(logits, [params] * len(tokens)).log()
    at = torch.arange(len(tokens), device=logp.device)
    chosen = logp[at, torch.tensor(list(tokens), device=logp.device)].tolist()
    k = params.logprobs or 0
    values, ids = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
    return [
        TokenLogprob(int(t), lp, list(zip(i, v, strict=True)))
        for t, lp, i, v in zip(tokens, chosen, ids.tolist(), values.tolist(), strict=True)
    ]


def make_generator(seed: int | None, device: torch.device = HOST) -> torch.Generator:
    """A per-request generator on `device`: seeded when asked, else from the global torch RNG.
    (A seed draws different numbers on the CPU and on CUDA: outputs repeat per device.)"""
    g = torch.Generator(device=device)
    g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,), device=HOST)))
    return g


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token from a distribution [V]: an exponential race, argmax_v p_v / E_v with E_v ~
    Exp(1) from `generator` (exact: token v wins with probability p_v / sum(p)).

    Each token has its own clock, so a tiny change of the probabilities (bf16 logits moved by
    batch padding) changes the winner only when two clocks nearly tie; the inverse-CDF draw
    compares one uniform with sums over every lower token id, where small shifts add up.
    """
    # -log(u), u uniform in [0, 1): Exp(1) clocks, as fast as one cumulative sum over V
    clocks = torch.rand(probs.shape[0], generator=generator, device=probs.device).log_().neg_()
    return int(torch.argmax(probs.float() / clocks))
