"""Draft-model speculative decoding with an exact acceptance rule (`spec` or `block`).

Per step and request: the draft model catches up on the tokens it has not seen, proposes γ
tokens autoregressively (γ batched draft passes), the target scores the pending token plus the
draft in one pass, and the rule keeps τ drafted tokens plus one token drawn from its residual.
Both caches roll back with `truncate`; the drawn token is the next step's pending token. A new
request needs no separate prefill: its prompt is simply the first pending input of both models.

`gamma="auto"` adapts γ per request from what it just saw (the schedule `transformers` calls
"heuristic"): +2 after a fully accepted draft, -1 after a rejection, within [1, 8]. Requests
whose text the draft predicts well draft long, the others stop paying for drafts they lose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from braid.methods import acceptance
from braid.methods.acceptance import AUTO_START, greedy_prefix, next_gamma
from braid.methods.draft import Drafter
from braid.methods.penalties import penalise, penalise_chains
from braid.model.batch import Append, build_batch
from braid.model.transformer import Transformer
from braid.sampling import process_logits, sample

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request

RULES = {"spec": acceptance.token_level, "block": acceptance.block}


class DraftSpeculative:
    def __init__(self, draft: Transformer, rule: str = "spec", gamma: int | str = 4):
        self.adaptive = gamma == "auto"
        if not self.adaptive and not (isinstance(gamma, int) and gamma >= 1):
            raise ValueError(f"gamma must be an integer >= 1 or 'auto', got {gamma!r}")
        self.name = rule
        self.drafter = Drafter(draft)
        self.draft = draft
        self.rule = RULES[rule]
        self.gamma = AUTO_START if self.adaptive else gamma
        self.wanted: dict[int, int] = {}  # adaptive γ per request

    def release(self, request: Request) -> None:
        self.drafter.release(request)
        self.wanted.pop(request.id, None)

    def step(self, engine: Engine, requests: list[Request]) -> None:
        vocab = engine.model.config.vocab_size
        graphs = {r.id: self.drafter.graph(engine, r) for r in requests}
        wanted = {r.id: self.wanted.get(r.id, self.gamma) for r in requests}
        gammas = {r.id: self.drafter.budget(engine, r, wanted[r.id]) for r in requests}
        drafts: dict[int, list[int]] = {r.id: [] for r in requests}
        q_rows: dict[int, list[torch.Tensor]] = {r.id: [] for r in requests}
        caught_up: dict[int, int] = {}  # draft rows valid before this step's own proposals

        # -- propose: step 0 catches up on unseen tokens, then one token per draft pass
        for s in range(max(gammas.values())):
            active = [r for r in requests if gammas[r.id] > s]
            if not active:
                break
            appends, last, n = [], [], 0
            for r in active:
                g = graphs[r.id]
                ids = r.all_ids[g.length :] if s == 0 else [drafts[r.id][-1]]
                if s == 0:
                    caught_up[r.id] = g.length + len(ids)
                appends.append(Append(g, ids, range(g.length, g.length + len(ids))))
                n += len(ids)
                last.append(n - 1)
            logits, _ = self.draft.forward(
                build_batch(appends, self.draft.windows), torch.tensor(last)
            )
            # the draft sees the penalties the target will apply after the same tokens
            logits = penalise(logits[:, :vocab], active, [drafts[r.id] for r in active])
            if all(r.params.greedy for r in active):  # no distributions needed: argmax
                picks = logits.argmax(-1).tolist()
                for r, y in zip(active, picks):
                    drafts[r.id].append(y)
                    r.stats.draft_passes += 1
                continue
            probs = self.drafter.probs(logits, active, vocab)
            for r, q in zip(active, probs):
                drafts[r.id].append(
                    sample(q, r.generator) if not r.params.greedy else int(q.argmax())
                )
                q_rows[r.id].append(q)
                r.stats.draft_passes += 1

        # -- verify: the pending token(s) and the whole draft in one target pass
        appends, rows, n = [], [], 0
        kept_base = {}  # target rows valid whatever is accepted: cache + pending input
        for r in requests:
            ids = r.all_ids[r.graph.length :] + drafts[r.id]
            kept_base[r.id] = r.num_tokens
            appends.append(Append(r.graph, ids, range(r.graph.length, r.graph.length + len(ids))))
            k = len(drafts[r.id])
            rows.extend(range(n + len(ids) - k - 1, n + len(ids)))
            n += len(ids)
        logits, _, _ = engine.forward(appends, torch.tensor(rows))
        logits = penalise_chains(logits, requests, [drafts[r.id] for r in requests])
        offset = 0
        for r in requests:
            k = len(drafts[r.id])
            rows_r = logits[offset : offset + k + 1]
            offset += k + 1
            if r.params.greedy:
                tau, nxt = greedy_prefix(drafts[r.id], rows_r)
            else:
                tau, nxt = self._verify_sampled(r, drafts[r.id], q_rows[r.id], rows_r)
            if self.adaptive and k:
                self.wanted[r.id] = next_gamma(wanted[r.id], tau == k)
            r.accept_verified(drafts[r.id][:tau], nxt, proposed=k)
            # keep the pending input and the accepted draft; the drawn token is pending next
            r.graph.truncate(kept_base[r.id] + tau)
            if k:  # the draft cache holds y_1..y_{k-1} after its catch-up
                graphs[r.id].truncate(caught_up[r.id] + min(tau, k - 1))

    def _verify_sampled(self, r: Request, draft: list[int], qs: list, logits: torch.Tensor):
        """The rule's kept count τ and the token drawn after the kept draft."""
        k = len(draft)
        p = process_logits(logits, [r.params] * (k + 1))
        if not k:
            return 0, sample(p[0], r.generator)
        plan = self.rule(torch.tensor(draft), torch.stack(qs).to(p.dtype), p)
        tau = plan.decide(torch.rand(k, generator=r.generator, dtype=p.dtype))
        return tau, sample(plan.residuals[tau], r.generator)
