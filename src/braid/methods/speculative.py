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

import time
from typing import TYPE_CHECKING

import torch

from braid.methods import acceptance
from braid.methods.draft import Drafter
from braid.methods.penalties import penalise
from braid.methods.policy import DraftLengths
from braid.methods.verify import keep, verdict
from braid.model.batch import Append, build_batch
from braid.model.transformer import Transformer
from braid.sampling import sample

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request

RULES = {"spec": acceptance.token_level, "block": acceptance.block}


class DraftSpeculative:
    def __init__(self, draft: Transformer, rule: str = "spec", gamma: int | str = "auto"):
        if gamma != "auto" and not (isinstance(gamma, int) and gamma >= 1):
            raise ValueError(f"gamma must be an integer >= 1 or 'auto', got {gamma!r}")
        self.name = rule
        self.drafter = Drafter(draft)
        self.draft = draft
        self.rule = RULES[rule]
        self.lengths = DraftLengths(gamma)

    def release(self, request: Request) -> None:
        self.drafter.release(request)
        self.lengths.release(request.id)

    def step(self, engine: Engine, requests: list[Request]) -> None:
        vocab = engine.model.config.vocab_size
        graphs = {r.id: self.drafter.graph(engine, r) for r in requests}
        caps = [self.drafter.budget(engine, r, self.lengths.longest) for r in requests]
        gammas = dict(zip([r.id for r in requests], self.lengths.plan(requests, caps)))
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
            start = time.perf_counter()
            logits, _ = self.draft.forward(
                build_batch(appends, self.draft.windows),
                torch.tensor(last, device=self.draft.device),
            )
            self.lengths.observe_draft(n, time.perf_counter() - start)
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
        chains = [drafts[r.id] for r in requests]
        scored = self.lengths.timed_score(engine, requests, chains)
        for i, r in enumerate(requests):
            draft, k = chains[i], len(chains[i])
            tau, nxt = verdict(self.rule, r, draft, q_rows[r.id], scored.logits[i])
            self.lengths.record(r.id, k, tau)
            keep(r, draft, tau, nxt, scored.kept_base[i], scored.logits[i])
            if k:  # the draft cache holds y_1..y_{k-1} after its catch-up
                graphs[r.id].truncate(caught_up[r.id] + min(tau, k - 1))
