"""Draft trees from the heads: several candidates per position, verified in one target pass.

A tree *template* is a list of rank paths, e.g. [(0,), (1,), (0, 0), (0, 0, 0), (2,)]: the node
(k_1, .., k_d) is the k_d-th most likely token at draft depth d under the mixture's marginal
conditioned on its parent's tokens (depth 1 is position 2: position 1 is the token the target
draws). Templates list parents before children, ordered by how often the node is right, so any
prefix of one is again a tree; `fit_template` learns that order from the ranks of the true
tokens (Medusa's sparse trees, fitted per set of heads).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Sequence

import torch

Path = tuple[int, ...]


def check_template(template: Sequence[Sequence[int]]) -> list[Path]:
    """The template as tuples; every node's parent must come before it."""
    seen: set[Path] = {()}
    out = []
    for node in template:
        path = tuple(int(k) for k in node)
        if not path or min(path) < 0 or path[:-1] not in seen or path in seen:
            raise ValueError(
                f"tree node {list(path)}: a tree template lists non-empty paths of ranks >= 0, "
                "each once and after its parent"
            )
        seen.add(path)
        out.append(path)
    return out


def fit_template(ranks: torch.Tensor, size: int, max_rank: int = 16) -> list[Path]:
    """The `size` paths most often right: ranks [N, D] holds, per drafting state, the rank of
    the true token at each depth under the marginal conditioned on the true earlier tokens.

    A path counts where every depth's true token has exactly its rank (the walk takes that
    branch). A parent is right whenever its child is, so ordering by count (ties: shallower
    first) keeps parents before children.
    """
    counts: Counter[Path] = Counter()
    for row in ranks.tolist():
        for d in range(len(row)):
            if row[d] >= max_rank:
                break
            counts[tuple(row[: d + 1])] += 1
    ordered = sorted(counts, key=lambda p: (-counts[p], len(p), p))
    return ordered[:size]


def expected_tokens(ranks: torch.Tensor, template: Sequence[Path]) -> float:
    """Mean tokens a verify pass emits with this tree, from ranks [N, D] as in `fit_template`
    (one drafting state each; the drawn token plus the accepted depth)."""
    nodes = {tuple(p) for p in template}
    total = 0
    for row in ranks.tolist():
        depth = 0
        while depth < len(row) and tuple(row[: depth + 1]) in nodes:
            depth += 1
        total += 1 + depth
    return total / max(1, len(ranks))


def default_template(depth: int, size: int) -> list[Path]:
    """For heads without a fitted tree: the `size` best paths when the k-th candidate at a
    depth is right with odds 0.8 * 2^-(k + 1) (a guess at how fast ranks and depths lose).
    Best-first: a node's first child and next sibling are the only ways to a lower score."""

    def score(path: Path) -> float:
        return math.prod(0.8 * 0.5 ** (k + 1) for k in path)

    heap = [(-score((0,)), (0,))]
    out: list[Path] = []
    while heap and len(out) < size:
        _, path = heapq.heappop(heap)
        out.append(path)
        sibling = (*path[:-1], path[-1] + 1)
        heapq.heappush(heap, (-score(sibling), sibling))
        if len(path) < depth:
            heapq.heappush(heap, (-score((*path, 0)), (*path, 0)))
    return sorted(out, key=lambda p: (-score(p), len(p), p))


def draft_tree(
    template: Sequence[Path],
    scores: torch.Tensor,
    log_post: torch.Tensor | None = None,
) -> tuple[list[int], list[int]]:
    """Tokens and parent indices (-1: the root) of the template's nodes, in template order.

    scores [D, r, V]: P_α^(d) for depths d = 1..D (positions 2..D+1), probabilities. With one
    expert (`log_post` None) any monotone score works (raw logits): a node's candidates are
    the top tokens of its depth. With r experts, `log_post` [r] is the posterior after the
    drawn token; each node's children are the top tokens of the marginal conditioned on its
    path, Σ_α π_α P_α^(d)(x) with π ∝ w Π P_α(path tokens) (Bayes on the mixture).
    """
    index = {p: i for i, p in enumerate(template)}
    index[()] = -1
    tokens = [0] * len(template)
    parents = [index[p[:-1]] for p in template]
    posts: dict[Path, torch.Tensor] = {(): log_post} if log_post is not None else {}
    by_depth: dict[int, list[Path]] = {}
    for path in template:
        by_depth.setdefault(len(path), []).append(path)
    for d in sorted(by_depth):  # a depth's candidates need the posteriors of the one above
        nodes = by_depth[d]
        owners = list(dict.fromkeys(p[:-1] for p in nodes))
        k = 1 + max(p[-1] for p in nodes)
        if log_post is None:
            top = scores[d - 1, 0].topk(k).indices[None].expand(len(owners), k)
        else:
            pi = torch.stack([posts[o] for o in owners]).exp()
            top = (pi.to(scores.dtype) @ scores[d - 1]).topk(k, dim=-1).indices
        top = top.tolist()
        row = {o: i for i, o in enumerate(owners)}
        for p in nodes:
            token = tokens[index[p]] = top[row[p[:-1]]][p[-1]]
            if log_post is not None and d < len(scores):
                joint = posts[p[:-1]] + torch.log(scores[d - 1, :, token])
                total = torch.logsumexp(joint, 0)
                posts[p] = joint - total if torch.isfinite(total) else posts[p[:-1]]
    return tokens, parents


@torch.no_grad()
def true_ranks(heads, hidden: torch.Tensor, targets: torch.Tensor, unembed, batch: int = 64):
    """Ranks [N, n - 1] of the true tokens at positions 2..n under the heads' marginal
    conditioned on the true tokens before them: hidden [N, d], targets [N, n] (positions 1..n).
    Rank 0 is the marginal's argmax; ties count in the token's favour."""
    out, dtype = [], heads.gate.weight.dtype
    for i in range(0, hidden.shape[0], batch):
        h, y = hidden[i : i + batch].to(dtype), targets[i : i + batch]
        probs = heads.factor_log_probs(h, unembed, log=False)  # [B, n, r, V]
        log_post = heads.log_weights(h).to(probs.dtype)
        ranks = []
        for s in range(probs.shape[1] - 1):
            picked = probs[:, s].gather(-1, y[:, s, None, None].expand(-1, probs.shape[2], 1))
            joint = log_post + torch.log(picked[..., 0])
            total = torch.logsumexp(joint, -1, keepdim=True)
            log_post = torch.where(torch.isfinite(total), joint - total, log_post)
            q = torch.einsum("br,brv->bv", log_post.exp(), probs[:, s + 1])
            ranks.append((q > q.gather(-1, y[:, s + 1, None])).sum(-1))
        out.append(torch.stack(ranks, -1))
    return torch.cat(out)
