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

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch

from braid.cache import ROOT
from braid.methods.acceptance import joint_threshold
from braid.methods.penalties import penalise, penalise_trees
from braid.methods.speculative import DraftSpeculative
from braid.model.batch import Append, build_batch, tree_append
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
    """Up to n distinct indices drawn without replacement with probability ∝ weights, in draw
    order. Candidates come i.i.d. ∝ weights from one inverse-CDF batch and repeats are
    rejected, so each kept one is a draw ∝ weights over what is left (successive sampling).
    A batch short of n distinct (a dominant weight) zeroes what was drawn and draws again.
    About 3x faster than one cumulative sum per draw over W x V beam scores."""
    w = weights.double()
    n = min(n, int(torch.count_nonzero(w)))
    picks: list[int] = []
    while len(picks) < n:
        cdf = w.cumsum(0)
        u = torch.rand(4 * n, generator=generator, dtype=torch.float64, device=w.device)
        u *= cdf[-1]
        for i in torch.searchsorted(cdf, u, right=True).clamp_(max=w.numel() - 1).tolist():
            if i not in picks:
                picks.append(i)
                if len(picks) == n:
                    break
        if len(picks) < n:
            w = w.clone()
            w[picks] = 0.0
    return torch.tensor(picks, dtype=torch.long, device=w.device)


# draw(scores, n) -> indices into `scores`: the only randomness of beam sampling
Draw = Callable[[torch.Tensor, int], torch.Tensor]


class BeamDraft:
    """One request's beam sampling, free of models and caches: the node tree and live beams.

    Each step gets the draft's distributions after every live beam (one row per beam, in
    `frontier` order) and keeps `width` (beam, token) pairs drawn by `draw` from
    weight x q; the chosen pairs' scores, renormalised, are the new beam weights.
    """

    def __init__(self, width: int):
        self.width = width
        self.nodes: list[Node] = []
        self.beams: list[tuple[int, float]] = []  # (node index, weight)

    def frontier(self) -> list[int]:
        """The node each live beam ends in; [-1] (the empty prefix) before the first step."""
        return [b for b, _ in self.beams] if self.beams else [-1]

    def extend(self, q: torch.Tensor, draw: Draw) -> None:
        beams = [w for _, w in self.beams] or [1.0]
        weights = torch.tensor(beams, dtype=q.dtype, device=q.device)
        scores = (weights[:, None] * q).flatten()
        picks = draw(scores, self.width)
        parents, vocab = self.frontier(), q.shape[1]
        depth = self.nodes[parents[0]].depth + 1 if parents[0] >= 0 else 1
        kept = scores[picks]
        total = float(kept.sum())
        chosen = []
        for flat, qv, sv in zip(picks.tolist(), q.flatten()[picks].tolist(), kept.tolist()):
            b, tok = divmod(flat, vocab)
            self.nodes.append(Node(tok, parents[b], qv, depth))
            chosen.append((len(self.nodes) - 1, sv / total))
        self.beams = chosen

    def best_chain(self) -> list[int]:
        """Node indices of the highest-weight beam, root first ([] before any step)."""
        if not self.beams:
            return []
        return path(self.nodes, max(self.beams, key=lambda nw: nw[1])[0])


def greedy_draw(scores: torch.Tensor, n: int) -> torch.Tensor:
    return scores.argmax()[None]


def chain_verdict(
    nodes: list[Node], chain: list[int], p: torch.Tensor, tau: float
) -> tuple[list[int], torch.Tensor]:
    """`mtad`: the kept prefix of `chain` and the distribution of the next token.

    p[j] is the target's distribution after the first j chain tokens (j = 0..len(chain)).
    """
    k = len(chain)
    if not k:
        return [], p[0]
    tokens = [nodes[i].token for i in chain]
    q = torch.tensor([nodes[i].q for i in chain], dtype=torch.float64, device=p.device)
    ratios = p[torch.arange(k, device=p.device), tokens].double() / q
    n_keep = joint_threshold(ratios, tau)
    return chain[:n_keep], p[n_keep]


def tree_verdict(nodes: list[Node], p: torch.Tensor, tau: float) -> tuple[list[int], torch.Tensor]:
    """`mtad-tree`: the kept root-to-node path and the distribution of the next token.

    p[0] follows the pending tokens, p[1 + i] follows node i. A node passes when its joint
    log(p/q) along its path exceeds log tau; the deepest passing node with the highest target
    joint probability is kept.
    """
    log_tau = math.log(tau)
    log_ratio: list[float] = []
    log_joint: list[float] = []
    for nd in nodes:
        prob = float(p[nd.parent + 1, nd.token])
        log_p = math.log(prob) if prob > 0 else -math.inf
        up = nd.parent
        log_ratio.append(log_p - math.log(nd.q) + (log_ratio[up] if up >= 0 else 0.0))
        log_joint.append(log_p + (log_joint[up] if up >= 0 else 0.0))
    passing = [i for i in range(len(nodes)) if log_ratio[i] > log_tau]
    if not passing:
        return [], p[0]
    deepest = max(nodes[i].depth for i in passing)
    leaf = max((i for i in passing if nodes[i].depth == deepest), key=log_joint.__getitem__)
    return path(nodes, leaf), p[leaf + 1]


class Mtad:
    """`gamma="auto"`: the batch-aware policy (`braid.methods.policy`) picks each request's
    draft depth per step, 0 included (a tree's verify pass holds `beams` nodes per depth).

    At temperature 0 beam sampling keeps one beam and the joint test is greedy verification,
    so a batch of greedy requests runs `spec`'s width-1 step (same draft cache, same policy):
    never slower than `spec` there, and token for token `ar`'s output."""

    def __init__(
        self,
        draft: Transformer,
        gamma: int | str = "auto",
        beams: int = 4,
        tau: float = 0.5,
        tree: bool = False,
    ):
        if gamma != "auto" and not (isinstance(gamma, int) and gamma >= 1):
            raise ValueError(f"gamma must be an integer >= 1 or 'auto', got {gamma!r}")
        if beams < 1 or not tau > 0:
            raise ValueError(f"need beams >= 1 and tau > 0; got {beams}, {tau}")
        self.name = "mtad-tree" if tree else "mtad"
        self.beams, self.tau, self.tree = beams, tau, tree
        self.greedy = DraftSpeculative(draft, "spec", gamma)  # the width-1 path
        self.drafter = self.greedy.drafter
        self.lengths = self.greedy.lengths  # one cost table and acceptance for both paths

    def release(self, request: Request) -> None:
        self.greedy.release(request)

    # -- draft: beam sampling on the draft model's token graph -------------------------------
    def _propose(self, engine: Engine, requests: list[Request]):
        vocab = engine.model.config.vocab_size
        graphs = {r.id: self.drafter.graph(engine, r) for r in requests}
        # the tree pass holds every beam node in the target cache, the draft holds W per step
        target_width = self.beams if self.tree else 1
        caps = [
            self.drafter.budget(engine, r, self.lengths.longest, self.beams, target_width)
            for r in requests
        ]
        depth = dict(zip([r.id for r in requests], self.lengths.plan(requests, caps)))
        drafts = {r.id: BeamDraft(self.beams) for r in requests}
        caught_up: dict[int, int] = {}
        for s in range(max(depth.values(), default=0)):
            active = [r for r in requests if depth[r.id] > s]
            if not active:
                break
            appends, last, owners, seen, n = [], [], [], [], 0
            for r in active:
                g, beam = graphs[r.id], drafts[r.id]
                if s == 0:
                    ids = r.all_ids[g.length :]
                    appends.append(Append(g, ids, range(g.length, g.length + len(ids))))
                    caught_up[r.id] = g.length + len(ids)
                    n += len(ids)
                    last.append(n - 1)
                    owners.append(r)
                    seen.append(())
                    continue
                # every beam's newest token, each in a branch of the beam it extends
                ns = beam.nodes
                toks, pos, segs = [], [], []
                for b in beam.frontier():
                    node = ns[b]
                    parent_seg = ns[node.parent].seg if node.parent >= 0 else ROOT
                    (node.seg,) = g.fork(parent_seg, 1)
                    node.row = g.length + len(toks)
                    toks.append(node.token)
                    pos.append(caught_up[r.id] + node.depth - 1)
                    segs.append(node.seg)
                    if r.params.penalised:  # the beam's row has seen the beam's tokens
                        seen.append([ns[i].token for i in path(ns, b)])
                    else:
                        seen.append(())
                appends.append(Append(g, toks, pos, segs))
                n += len(toks)
                last += range(n - len(toks), n)
                owners += [r] * len(toks)
            start = time.perf_counter()
            logits, _ = self.drafter.model.forward(
                build_batch(appends, self.drafter.model.windows),
                torch.tensor(last, device=self.drafter.model.device),
            )
            self.lengths.observe_draft(n, time.perf_counter() - start)
            logits = penalise(logits[:, :vocab], owners, seen)
            probs = self.drafter.probs(logits, owners, vocab)
            for r in active:
                r.stats.draft_passes += 1
                rows = [i for i, o in enumerate(owners) if o is r]
                draw = greedy_draw if r.params.greedy else partial(_seeded, r.generator)
                drafts[r.id].extend(probs[rows], draw)
        return graphs, depth, drafts, caught_up

    # -- verify ----------------------------------------------------------------------------
    def step(self, engine: Engine, requests: list[Request]) -> None:
        if all(r.params.greedy for r in requests):
            self.lengths.width = 1
            self.greedy.step(engine, requests)
            return
        self.lengths.width = self.beams if self.tree else 1  # a tree verifies W nodes per depth
        graphs, depth, drafts, caught_up = self._propose(engine, requests)
        if self.tree:
            kept = self._verify_tree(engine, requests, drafts)
        else:
            kept = self._verify_chain(engine, requests, drafts)
        for r in requests:  # the draft cache keeps its prefix and the accepted, drafted path
            self.lengths.record(r.id, depth[r.id], len(kept[r.id]))
            if depth[r.id] and not r.finished:
                ns = drafts[r.id].nodes
                drafted = [ns[i].row for i in kept[r.id] if ns[i].row >= 0]
                graphs[r.id].keep_path(caught_up[r.id], drafted)
                graphs[r.id].linearize()

    def _verify_chain(self, engine, requests, drafts) -> dict[int, list[int]]:
        chains = [drafts[r.id].best_chain() for r in requests]
        tokens = [[drafts[r.id].nodes[i].token for i in c] for r, c in zip(requests, chains)]
        scored = self.lengths.timed_score(engine, requests, tokens)
        kept = {}
        for i, r in enumerate(requests):
            k = len(chains[i])
            p = process_logits(scored.logits[i], [r.params] * (k + 1))
            chain, nxt = chain_verdict(drafts[r.id].nodes, chains[i], p, self.tau)
            rows = scored.logits[i][: len(chain) + 1]
            self._emit(r, tokens[i][: len(chain)], nxt, proposed=k, rows=rows)
            kept[r.id] = chain
            r.graph.truncate(scored.kept_base[i] + len(chain))
        return kept

    def _verify_tree(self, engine, requests, drafts) -> dict[int, list[int]]:
        appends, rows, n, base = [], [], 0, {}
        for r in requests:
            ns = drafts[r.id].nodes
            pending = r.all_ids[r.graph.length :]
            base[r.id] = r.num_tokens
            tree = [nd.token for nd in ns]
            appends.append(tree_append(r.graph, pending, tree, [nd.parent for nd in ns]))
            rows.extend(range(n + len(pending) - 1, n + len(pending) + len(ns)))
            n += len(pending) + len(ns)
        start = time.perf_counter()
        logits, _, _ = engine.forward(appends, torch.tensor(rows, device=engine.device))
        self.lengths.observe_verify(n, time.perf_counter() - start)
        trees = [
            ([nd.token for nd in ns], [nd.parent for nd in ns])
            for ns in (drafts[r.id].nodes for r in requests)
        ]
        logits = penalise_trees(logits, requests, trees)
        kept, offset = {}, 0
        for r in requests:
            ns = drafts[r.id].nodes
            own = logits[offset : offset + len(ns) + 1]
            p = process_logits(own, [r.params] * (len(ns) + 1))
            offset += len(ns) + 1
            chain, nxt = tree_verdict(ns, p, self.tau)
            rows = own[[0] + [i + 1 for i in chain]]  # row 1 + i follows node i
            self._emit(r, [ns[i].token for i in chain], nxt, proposed=len(ns), rows=rows)
            kept[r.id] = chain
            r.graph.keep_path(base[r.id], [base[r.id] + i for i in chain])
            r.graph.linearize()
        return kept

    @staticmethod
    def _emit(
        r: Request, accepted: list[int], next_dist: torch.Tensor, proposed: int, rows: torch.Tensor
    ) -> None:
        nxt = int(next_dist.argmax()) if r.params.greedy else sample(next_dist, r.generator)
        r.accept_verified(accepted, nxt, proposed, rows)


def _seeded(generator: torch.Generator, scores: torch.Tensor, n: int) -> torch.Tensor:
    return draw_distinct(scores, n, generator)
