"""MTAD (Qin et al., ICLR 2025): the draft model beam-samples γ tokens, the target verifies jointly.

Draft: W beams over γ steps on the draft model, each beam a branch of the draft's token graph
(beams fork from the beam they extend; all W new tokens go in one draft pass). Step 1 samples W
distinct tokens from q with weights ∝ q; step s draws W distinct (beam, token) pairs with
probability ∝ weight × q(token | beam) and renormalises.

Verify (`mtad`): the highest-weight beam y_1..γ goes to the target as a chain; with
R_i = prod_{k<=i} p(y_k)/q(y_k), keep y_1..y_L for the largest L with R_L > τ, then sample one
token from the target at L + 1. `mtad-tree` sends every beam node to the target as one token
tree in a single pass and keeps the deepest node whose joint ratio clears τ (the most probable
under the target among those), compacting both caches to that path with `keep`.

This rule is lossy by design: there is no residual resampling, so the output distribution is
not the target's (at temperature 0 it is: it reduces to greedy verification).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from braid.cache import ROOT
from braid.methods.acceptance import joint_threshold
from braid.methods.draft import Drafter
from braid.model.batch import Append, build_batch
from braid.model.transformer import Transformer
from braid.sampling import process_logits, sample

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request


@dataclass
class Node:
    token: int
    parent: int  # index of the parent node, -1 for depth 1
    q: float  # draft probability of `token` given the path to it
    depth: int
    seg: int = -1  # draft segment holding the token (once appended)
    row: int = -1  # draft cache row (once appended)


def path(nodes: list[Node], leaf: int) -> list[int]:
    out = []
    while leaf >= 0:
        out.append(leaf)
        leaf = nodes[leaf].parent
    return out[::-1]


def draw_distinct(weights: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Up to n distinct indices drawn without replacement with probability ∝ weights."""
    n = min(n, int((weights > 0).sum()))
    return torch.multinomial(weights, n, replacement=False, generator=generator)


class Mtad:
    def __init__(
        self,
        draft: Transformer,
        gamma: int = 4,
        beams: int = 4,
        tau: float = 0.5,
        tree: bool = False,
    ):
        if gamma < 1 or beams < 1 or not tau > 0:
            raise ValueError(f"need gamma >= 1, beams >= 1, tau > 0; got {gamma}, {beams}, {tau}")
        self.name = "mtad-tree" if tree else "mtad"
        self.drafter = Drafter(draft)
        self.gamma, self.beams, self.tau, self.tree = gamma, beams, tau, tree

    def release(self, request: Request) -> None:
        self.drafter.release(request)

    # -- draft: beam sampling on the draft model's token graph -------------------------------
    def _propose(self, engine: Engine, requests: list[Request]):
        vocab = engine.model.config.vocab_size
        graphs = {r.id: self.drafter.graph(engine, r) for r in requests}
        depth = {r.id: self.drafter.budget(engine, r, self.gamma) for r in requests}
        nodes: dict[int, list[Node]] = {r.id: [] for r in requests}
        beams: dict[int, list[tuple[int, float]]] = {r.id: [] for r in requests}  # (node, w)
        caught_up: dict[int, int] = {}
        for s in range(self.gamma):
            active = [r for r in requests if depth[r.id] > s]
            if not active:
                break
            appends, last, owners, n = [], [], [], 0
            for r in active:
                g = graphs[r.id]
                if s == 0:
                    ids = r.all_ids[g.length :]
                    appends.append(Append(g, ids, range(g.length, g.length + len(ids))))
                    caught_up[r.id] = g.length + len(ids)
                    n += len(ids)
                    last.append(n - 1)
                    owners.append((r, None))
                    continue
                # every beam's newest token, each in a branch of the beam it extends
                ns = nodes[r.id]
                toks, pos, segs = [], [], []
                for b, _ in beams[r.id]:
                    node = ns[b]
                    parent_seg = ns[node.parent].seg if node.parent >= 0 else ROOT
                    (node.seg,) = g.fork(parent_seg, 1)
                    node.row = g.length + len(toks)
                    toks.append(node.token)
                    pos.append(caught_up[r.id] + node.depth - 1)
                    segs.append(node.seg)
                appends.append(Append(g, toks, pos, segs))
                for b, _ in beams[r.id]:
                    n += 1
                    last.append(n - 1)
                    owners.append((r, b))
            logits, _ = self.drafter.model.forward(
                build_batch(appends, self.drafter.model.windows), torch.tensor(last)
            )
            probs = self.drafter.probs(logits, [r for r, _ in owners], vocab)
            for r in active:
                r.stats.draft_passes += 1
                rows = [i for i, (o, _) in enumerate(owners) if o is r]
                self._extend(r, nodes[r.id], beams, [owners[i][1] for i in rows], probs[rows], s)
        return graphs, depth, nodes, beams, caught_up

    def _extend(self, r: Request, nodes, beams, parents, q: torch.Tensor, s: int) -> None:
        """Choose the W (beam, token) pairs of depth s + 1 and their renormalised weights."""
        weights = torch.tensor([w for _, w in beams[r.id]] or [1.0], dtype=q.dtype)
        scores = (weights[:, None] * q).flatten()
        if r.params.greedy:
            picks = scores.argmax()[None]
        else:
            picks = draw_distinct(scores, self.beams, r.generator)
        vocab = q.shape[1]
        chosen = []
        total = float(scores[picks].sum())
        for flat in picks.tolist():
            b, tok = divmod(flat, vocab)
            parent = parents[b] if parents[b] is not None else -1
            nodes.append(Node(tok, parent, float(q[b, tok]), s + 1))
            chosen.append((len(nodes) - 1, float(scores[flat]) / total))
        beams[r.id] = chosen

    # -- verify ----------------------------------------------------------------------------
    def step(self, engine: Engine, requests: list[Request]) -> None:
        graphs, depth, nodes, beams, caught_up = self._propose(engine, requests)
        if self.tree:
            kept = self._verify_tree(engine, requests, nodes)
        else:
            kept = self._verify_chain(engine, requests, nodes, beams, depth)
        for r in requests:  # the draft cache keeps its prefix and the accepted, drafted path
            if depth[r.id] and not r.finished:
                drafted = [nodes[r.id][i].row for i in kept[r.id] if nodes[r.id][i].row >= 0]
                graphs[r.id].keep(torch.tensor(list(range(caught_up[r.id])) + drafted))
                graphs[r.id].linearize()

    def _verify_chain(self, engine, requests, nodes, beams, depth) -> dict[int, list[int]]:
        chains = {
            r.id: path(nodes[r.id], max(beams[r.id], key=lambda nw: nw[1])[0])
            if depth[r.id]
            else []
            for r in requests
        }
        appends, rows, n, base = [], [], 0, {}
        for r in requests:
            draft = [nodes[r.id][i].token for i in chains[r.id]]
            ids = r.all_ids[r.graph.length :] + draft
            base[r.id] = r.num_tokens
            appends.append(Append(r.graph, ids, range(r.graph.length, r.graph.length + len(ids))))
            rows.extend(range(n + len(ids) - len(draft) - 1, n + len(ids)))
            n += len(ids)
        logits, _, _ = engine.forward(appends, torch.tensor(rows))
        kept, offset = {}, 0
        for r in requests:
            chain = chains[r.id]
            k = len(chain)
            p = process_logits(logits[offset : offset + k + 1], [r.params] * (k + 1))
            offset += k + 1
            tokens = [nodes[r.id][i].token for i in chain]
            q = torch.tensor([nodes[r.id][i].q for i in chain], dtype=torch.float64)
            ratios = p[torch.arange(k), tokens].double() / q
            n_keep = joint_threshold(ratios, self.tau) if k else 0
            self._emit(r, tokens[:n_keep], p[n_keep], proposed=k)
            kept[r.id] = chain[:n_keep]
            r.graph.truncate(base[r.id] + n_keep)
        return kept

    def _verify_tree(self, engine, requests, nodes) -> dict[int, list[int]]:
        appends, rows, n, base = [], [], 0, {}
        for r in requests:
            g, ns = r.graph, nodes[r.id]
            pending = r.all_ids[g.length :]
            base[r.id] = r.num_tokens
            # pending tokens on the trunk, then each tree node branches off its parent's segment
            segs: list[int] = []
            for node in ns:
                segs.append(g.fork(segs[node.parent] if node.parent >= 0 else ROOT, 1)[0])
            ids = pending + [node.token for node in ns]
            pos = list(range(g.length, base[r.id])) + [base[r.id] + nd.depth - 1 for nd in ns]
            appends.append(Append(g, ids, pos, [ROOT] * len(pending) + segs))
            rows.extend(range(n + len(pending) - 1, n + len(ids)))
            n += len(ids)
        logits, _, _ = engine.forward(appends, torch.tensor(rows))
        kept, offset, log_tau = {}, 0, float(torch.log(torch.tensor(self.tau)))
        for r in requests:
            ns = nodes[r.id]
            p = process_logits(logits[offset : offset + len(ns) + 1], [r.params] * (len(ns) + 1))
            offset += len(ns) + 1
            # p[0] follows the pending tokens, p[1 + i] follows node i
            log_p = [float(p[nd.parent + 1, nd.token]) for nd in ns]
            log_p = torch.log(torch.tensor(log_p, dtype=torch.float64)).tolist()
            log_ratio, log_joint = [], []
            for i, nd in enumerate(ns):
                up = nd.parent
                log_ratio.append(
                    log_p[i]
                    - float(torch.log(torch.tensor(nd.q, dtype=torch.float64)))
                    + (log_ratio[up] if up >= 0 else 0.0)
                )
                log_joint.append(log_p[i] + (log_joint[up] if up >= 0 else 0.0))
            passing = [i for i in range(len(ns)) if log_ratio[i] > log_tau]
            chain, nxt = [], p[0]
            if passing:
                deepest = max(ns[i].depth for i in passing)
                leaf = max(
                    (i for i in passing if ns[i].depth == deepest), key=log_joint.__getitem__
                )
                chain, nxt = path(ns, leaf), p[leaf + 1]
            self._emit(r, [ns[i].token for i in chain], nxt, proposed=len(ns))
            kept[r.id] = chain
            r.graph.keep(torch.tensor(list(range(base[r.id])) + [base[r.id] + i for i in chain]))
            r.graph.linearize()
        return kept

    @staticmethod
    def _emit(r: Request, accepted: list[int], next_dist: torch.Tensor, proposed: int) -> None:
        nxt = int(next_dist.argmax()) if r.params.greedy else sample(next_dist, r.generator)
        r.stats.passes += 1
        r.stats.draft_tokens += proposed
        r.stats.accepted_tokens += len(accepted)
        r.accept(accepted + [nxt])
