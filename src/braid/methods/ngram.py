"""Prompt lookup (`ngram`, `ngram-block`): drafts copied from the request's own text.

The proposer is the one `transformers` calls `prompt_lookup_num_tokens`, vLLM `ngram` and
llama.cpp `lookup`: take the last n tokens of the prompt plus the output so far, find their most
recent earlier occurrence, and draft the (up to γ) tokens that followed it; n runs from
`NGRAM_MAX` down to `NGRAM_MIN`, so the longest matching suffix wins. It needs no draft model
and no training, so it works for any checkpoint, and it pays where outputs copy their input
(code edits, summaries, retrieval answers, repeated structure).

Defaults: n from 3 down to 1. vLLM's defaults match up to 4 tokens, `transformers` up to 2
(down to 1); 3 keeps most of the precision of long matches, and 1 still drafts when only a
token repeats (a wrong draft costs one more row in the verify pass, which the draft-length
policy weighs). The most recent occurrence is used, not the first: recent text predicts the
continuation better, and an index of the latest end per n-gram keeps lookup O(new tokens).

Verification uses the exact rules unchanged with the draft as a point mass, q = one-hot(y):
`token_level` then accepts y with probability p(y) and, on rejection, draws from p with y
removed and renormalised; `block` keeps the longest prefix its thresholds allow, with the
weights p_i = p_1(y_1) ... p_i(y_i). Both leave the output distribution equal to the target's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from braid.methods import acceptance
from braid.methods.policy import DraftLengths
from braid.methods.verify import keep, verdict

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request

NGRAM_MAX, NGRAM_MIN = 3, 1
RULES = {"ngram": acceptance.token_level, "ngram-block": acceptance.block}


class NgramIndex:
    """The latest end index of every n-gram (NGRAM_MIN <= n <= NGRAM_MAX) of a growing token
    sequence, excluding those that end at its last token (the suffix must match earlier text).
    """

    def __init__(self, max_n: int = NGRAM_MAX, min_n: int = NGRAM_MIN):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.max_n, self.min_n = max_n, min_n
        self.latest: dict[tuple[int, ...], int] = {}
        self.indexed = 0  # n-grams ending at 0 .. indexed - 1 are in `latest`

    def propose(self, ids: Sequence[int], k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest matching
        suffix of `ids` ([] if none). `ids` must extend the sequence of earlier calls."""
        length = len(ids)
        for end in range(self.indexed, length - 1):
            for n in range(self.min_n, min(self.max_n, end + 1) + 1):
                self.latest[tuple(ids[end - n + 1 : end + 1])] = end
        self.indexed = max(self.indexed, length - 1)
        if k < 1:
            return []
        for n in range(min(self.max_n, length), self.min_n - 1, -1):
            end = self.latest.get(tuple(ids[length - n :]))
            if end is not None:
                return list(ids[end + 1 : end + 1 + k])
        return []


def lookup(ids: Sequence[int], k: int, max_n: int = NGRAM_MAX, min_n: int = NGRAM_MIN) -> list[int]:
    """The prompt-lookup draft of `ids`, computed from scratch (`NgramIndex.propose`)."""
    return NgramIndex(max_n, min_n).propose(ids, k)


def point_masses(
    draft: Sequence[int], vocab: int, device: torch.device | None = None
) -> list[torch.Tensor]:
    """The draft distributions of copied tokens: one-hot rows (on `device`; None: the host)."""
    rows = torch.zeros(len(draft), vocab, device=device)
    at = torch.arange(len(draft), device=device)
    rows[at, torch.tensor(list(draft), dtype=torch.long, device=device)] = 1.0
    return list(rows)


class PromptLookup:
    """`gamma`: the longest draft per step, or "auto": the batch-aware policy
    (`braid.methods.policy`) picks each request's length, 0 included, up to what it matched."""

    def __init__(
        self,
        rule: str = "ngram",
        gamma: int | str = "auto",
        max_n: int = NGRAM_MAX,
        min_n: int = NGRAM_MIN,
    ):
        if gamma != "auto" and not (isinstance(gamma, int) and gamma >= 0):
            raise ValueError(f"gamma must be an integer >= 0 or 'auto', got {gamma!r}")
        self.name = rule
        self.rule = RULES[rule]
        self.lengths = DraftLengths(gamma, draft_cost=False)
        self.max_n, self.min_n = max_n, min_n
        self.indexes: dict[int, NgramIndex] = {}

    def release(self, request: Request) -> None:
        self.indexes.pop(request.id, None)
        self.lengths.release(request.id)

    def _propose(self, engine: Engine, r: Request) -> list[int]:
        """The longest draft this request may take: what it may still emit and the context
        holds, up to the policy's maximum."""
        index = self.indexes.get(r.id)
        if index is None:
            index = self.indexes[r.id] = NgramIndex(self.max_n, self.min_n)
        room = min(r.remaining - 1, engine.max_context - r.num_tokens)
        return index.propose(r.all_ids, max(0, min(self.lengths.longest, room)))

    def step(self, engine: Engine, requests: list[Request]) -> None:
        vocab = engine.model.config.vocab_size
        found = [self._propose(engine, r) for r in requests]
        gammas = self.lengths.plan(requests, [len(f) for f in found])
        drafts = [f[:g] for f, g in zip(found, gammas)]
        scored = self.lengths.timed_score(engine, requests, drafts)
        for i, r in enumerate(requests):
            draft = drafts[i]
            qs = [] if r.params.greedy else point_masses(draft, vocab, engine.device)
            tau, nxt = verdict(self.rule, r, draft, qs, scored.logits[i])
            self.lengths.record(r.id, len(draft), tau)
            keep(r, draft, tau, nxt, scored.kept_base[i], scored.logits[i])
