"""The chain verify step every drafting method shares: one target pass over each request's
pending token(s) plus its drafted chain, then the rule's verdict per request.

`score_chains` appends `pending + draft` to each request's graph, asks the target for the rows
that score the draft (the last pending row, then one per drafted token) and applies penalties
as each row has seen them. `verdict` turns one request's rows into (τ kept tokens, next token)
under an exact rule, and `keep` emits them and rolls the cache back to what stays. Trees have
their own append (`braid.model.batch.tree_append`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from braid.methods.acceptance import Plan, greedy_prefix
from braid.methods.penalties import penalise_chains
from braid.model.batch import Append
from braid.sampling import process_logits, sample

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request

Rule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Plan]


@dataclass
class Scored:
    """One target pass over drafted chains, split per request (in request order)."""

    logits: list[torch.Tensor]  # per request [k + 1, V]: row j follows the pending + draft[:j]
    hidden: list[torch.Tensor] | None  # the same rows' final hidden states (return_hidden)
    kept_base: list[int]  # cache rows valid whatever is accepted: context + pending input


def score_chains(
    engine: Engine,
    requests: Sequence[Request],
    drafts: Sequence[Sequence[int]],
    return_hidden: bool = False,
) -> Scored:
    """Append each request's pending tokens and draft, run the target once, penalise."""
    appends, rows, n, kept_base = [], [], 0, []
    for r, draft in zip(requests, drafts, strict=True):
        ids = r.all_ids[r.graph.length :] + list(draft)
        kept_base.append(r.num_tokens)
        appends.append(Append(r.graph, ids, range(r.graph.length, r.graph.length + len(ids))))
        rows.extend(range(n + len(ids) - len(draft) - 1, n + len(ids)))
        n += len(ids)
    logits, hidden, _ = engine.forward(
        appends, torch.tensor(rows, device=engine.device), return_hidden=return_hidden
    )
    logits = penalise_chains(logits, requests, drafts)
    sizes = [len(d) + 1 for d in drafts]
    return Scored(
        list(logits.split(sizes)),
        list(hidden.split(sizes)) if hidden is not None else None,
        kept_base,
    )


def verdict(
    rule: Rule, r: Request, draft: Sequence[int], qs: Sequence[torch.Tensor], logits: torch.Tensor
) -> tuple[int, int]:
    """τ, the number of drafted tokens kept, and the token drawn after them.

    Greedy requests keep the prefix that matches the target's argmax (every exact rule at
    temperature 0); sampled ones run `rule` on the processed distributions, `qs[j]` being the
    processed draft distribution that drew draft[j]."""
    if r.params.greedy:
        return greedy_prefix(list(draft), logits)
    k = len(draft)
    p = process_logits(logits, [r.params] * (k + 1))
    if not k:
        return 0, sample(p[0], r.generator)
    draft_ids = torch.tensor(list(draft), device=p.device)
    plan = rule(draft_ids, torch.stack(list(qs)).to(p.dtype), p)
    tau = plan.decide(torch.rand(k, generator=r.generator, dtype=p.dtype, device=p.device))
    return tau, sample(plan.residuals[tau], r.generator)


def keep(
    r: Request, draft: Sequence[int], tau: int, nxt: int, kept_base: int, logits: torch.Tensor
) -> None:
    """Emit τ drafted tokens and `nxt` (`logits`: the request's verify rows, row j scoring
    the token after draft[:j]); the cache keeps the pending input and the kept draft (`nxt` is
    the next step's pending token)."""
    r.accept_verified(list(draft[:tau]), nxt, proposed=len(draft), rows=logits[: tau + 1])
    r.graph.truncate(kept_base + tau)
