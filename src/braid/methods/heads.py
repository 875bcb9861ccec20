"""Self-speculative decoding with CP multi-token heads (`heads`, `heads-block`).

Each target pass returns, besides the logits, the final-normed hidden state of the row whose
next token x_{t+1} is then sampled. The heads turn that state into a rank-r mixture over the
next n tokens; the draft for position s (s = 2..n) is the mixture's marginal conditioned on
x_{t+1} and the tokens drafted before it (`braid.heads.draft`), processed with the request's
SamplingParams exactly like the target's distributions. The next pass appends x_{t+1} and the
draft, the acceptance rule (`token_level` for `heads`, `block` for `heads-block`) keeps τ drafted
tokens plus one drawn from its residual, the cache truncates, and the hidden state of the row
that drew that token feeds the next draft. A request's first pass (its prompt) has no draft.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from braid.heads.draft import condition, marginal
from braid.heads.module import CPHeads
from braid.methods import acceptance
from braid.methods.penalties import penalise
from braid.methods.policy import DraftLengths
from braid.methods.verify import keep, verdict
from braid.sampling import process_logits, sample

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request

RULES = {"heads": acceptance.token_level, "heads-block": acceptance.block}


def _draft_unembed(engine: Engine):
    """The target's unembedding without the exact fp32 fix-up near the top: a draft needs no
    exact logits (any draft distribution keeps the rules exact), so bf16 models skip it."""
    head = engine.model.lm_head
    if getattr(head, "eps", None) is None:
        return head
    return lambda x: head.fast(x.to(head.dtype))


def posteriors(heads: CPHeads, hidden: torch.Tensor, unembed, stop: int, drawn: list[int]):
    """Per state, (log posterior over experts after the drawn token x_{t+1} [r], P_α^(s) for
    s = 2..stop [stop - 1, r, V]): what every draft of positions 2.. starts from."""
    c = heads.config
    log_w = heads.log_weights(hidden)
    # position 1 only matters to condition a mixture on the token the target drew
    first = c.rank > 1 and not c.base_first
    probs = heads.factor_log_probs(hidden, unembed, stop, skip_first=not first, log=False)
    out = []
    for i, token in enumerate(drawn):
        post = log_w[i] - torch.logsumexp(log_w[i], 0)
        if first:
            post = condition(post, probs[i, 0], token)
        out.append((post, probs[i, 1:] if first else probs[i]))
    return out


class HeadsSpeculative:
    """`gamma`: drafted tokens per pass (at most n - 1), or "auto": the batch-aware policy
    (`braid.methods.policy`) picks each request's length per step, 0 included. The heads'
    cost is one pass through the unembedding whatever the length (a + b x drafted positions,
    measured): at batch 8 it is a matmul of 8 x 3 rows over the vocabulary, which the
    policy weighs against what the drafts save."""

    def __init__(self, heads: CPHeads, rule: str = "heads", gamma: int | str = "auto"):
        self.name = rule
        self.rule = RULES[rule]
        self.heads = heads.pack()
        self.hidden: dict[int, torch.Tensor] = {}  # request id -> state that drew its last token
        self.lengths = DraftLengths(gamma, one_pass=True, max_gamma=heads.config.n - 1)

    def release(self, request: Request) -> None:
        self.hidden.pop(request.id, None)
        self.lengths.release(request.id)

    def _budget(self, engine: Engine, r: Request) -> int:
        if r.id not in self.hidden:
            return 0
        room = engine.max_context - r.num_tokens
        longest = min(self.heads.config.n - 1, self.lengths.longest)
        return max(0, min(longest, r.remaining - 1, room))

    @torch.inference_mode()
    def _draft(self, engine: Engine, requests: list[Request], budgets: dict[int, int]):
        """Drafted tokens and their processed draft distributions, per request id."""
        drafts = {r.id: ([], []) for r in requests}
        active = [r for r in requests if budgets[r.id]]
        if not active:
            return drafts
        c = self.heads.config
        hidden = torch.stack([self.hidden[r.id] for r in active])
        stop = 1 + max(budgets[r.id] for r in active)
        if c.rank == 1 and all(r.params.greedy and not r.params.penalised for r in active):
            # one expert and no posterior: each position's draft is its own argmax
            logits = self.heads.factor_logits(hidden, _draft_unembed(engine), stop, skip_first=True)
            for r, picks in zip(active, logits[:, :, 0].argmax(-1).tolist()):
                drafts[r.id][0].extend(picks[: budgets[r.id]])
            return drafts
        drawn = [r.all_ids[-1] for r in active]
        states = posteriors(self.heads, hidden, _draft_unembed(engine), stop, drawn)
        for r, (post, rows) in zip(active, states):
            tokens, qs = drafts[r.id]
            for j in range(budgets[r.id]):
                q = marginal(post, rows[j])
                if r.params.greedy and not r.params.penalised:
                    y = int(q.argmax())  # greedy verification needs the drafted tokens alone
                else:
                    # log q stands in for the logits: the draft only approximates the target,
                    # and any draft keeps the rules exact
                    scores = penalise(q.log()[None], [r], [tokens])
                    if r.params.greedy:
                        y = int(scores.argmax())
                    else:
                        q = process_logits(scores, [r.params])[0]
                        y = sample(q, r.generator)
                        qs.append(q)
                tokens.append(y)
                if j + 1 < budgets[r.id]:
                    post = condition(post, rows[j], y)
        return drafts

    def step(self, engine: Engine, requests: list[Request]) -> None:
        caps = [self._budget(engine, r) for r in requests]
        budgets = dict(zip([r.id for r in requests], self.lengths.plan(requests, caps)))
        start = time.perf_counter()
        drafts = self._draft(engine, requests, budgets)
        if drafted := sum(budgets.values()):
            self.lengths.observe_draft(drafted, time.perf_counter() - start)

        # -- verify: pending token(s) plus the draft in one target pass, hidden states included
        chains = [drafts[r.id][0] for r in requests]
        scored = self.lengths.timed_score(engine, requests, chains, return_hidden=True)
        for i, r in enumerate(requests):
            draft, qs = drafts[r.id]
            tau, nxt = verdict(self.rule, r, draft, qs, scored.logits[i])
            self.lengths.record(r.id, len(draft), tau)
            self.hidden[r.id] = scored.hidden[i][tau]  # the state that drew nxt drafts next
            keep(r, draft, tau, nxt, scored.kept_base[i], scored.logits[i])
