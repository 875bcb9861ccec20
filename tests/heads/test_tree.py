"""Draft trees: candidates, template fitting and true ranks against brute-force enumeration."""

import itertools
from collections import Counter

import pytest
import torch
from test_loss import V, brute_force_joint, tiny_heads

from braid.heads.draft import condition
from braid.heads.tree import (
    check_template,
    default_template,
    draft_tree,
    expected_tokens,
    fit_template,
    true_ranks,
)


def conditional(table: torch.Tensor, prefix: tuple[int, ...]) -> torch.Tensor:
    """P(x_{len(prefix)+1} | x_1..x_len(prefix)) from the full joint table."""
    sub = table[prefix]
    marg = sub.sum(dim=tuple(range(1, sub.dim()))) if sub.dim() > 1 else sub
    return marg / marg.sum()


@pytest.mark.parametrize("rank", [1, 3])
def test_draft_tree_candidates_are_the_brute_force_conditionals_top_tokens(rank):
    heads, unembed = tiny_heads(n=4, rank=rank, seed=rank)
    template = check_template([(0,), (1,), (0, 0), (2,), (1, 0), (0, 1), (0, 0, 0), (1, 0, 1)])
    h = torch.randn(1, 6, dtype=torch.float64)
    table = brute_force_joint(heads, unembed, h[0])
    x1 = int(conditional(table, ()).argmax())  # the token the target drew
    probs = heads.factor_log_probs(h, unembed, log=False)[0]  # [n, r, V]
    if rank == 1:  # decoding ranks one expert's raw logits
        scores = heads.factor_logits(h, unembed, skip_first=True)[0]
        tokens, parents = draft_tree(template, scores)
    else:
        log_w = heads.log_weights(h)[0].double()
        post = condition(log_w - torch.logsumexp(log_w, 0), probs[0], x1)
        tokens, parents = draft_tree(template, probs[1:], post)
    by_path = dict(zip(template, tokens))
    for i, path in enumerate(template):
        parent = path[:-1]
        prefix = (x1, *(by_path[parent[: j + 1]] for j in range(len(parent))))
        order = conditional(table, prefix).argsort(descending=True).tolist()
        assert tokens[i] == order[path[-1]], (path, tokens[i], order)
        assert parents[i] == (template.index(parent) if parent else -1)


def brute_force_ranks(heads, unembed, h, y):
    table = brute_force_joint(heads, unembed, h)
    out = []
    for s in range(1, len(y)):
        q = conditional(table, tuple(y[:s]))
        out.append(int((q > q[y[s]]).sum()))
    return out


@pytest.mark.parametrize("rank", [1, 3])
def test_true_ranks_equal_ranks_under_the_brute_force_conditionals(rank):
    heads, unembed = tiny_heads(n=3, rank=rank, seed=7)
    h = torch.randn(6, 6, dtype=torch.float64)
    y = torch.randint(0, V, (6, 3))
    ours = true_ranks(heads, h, y, unembed, batch=4)
    expected = [brute_force_ranks(heads, unembed, h[i], y[i].tolist()) for i in range(6)]
    assert ours.tolist() == expected


def test_fit_template_takes_the_most_often_right_paths_parents_first():
    gen = torch.Generator().manual_seed(0)
    ranks = torch.multinomial(torch.tensor([0.5, 0.25, 0.15, 0.1]), 3 * 500, True, generator=gen)
    ranks = ranks.view(500, 3)
    counts = Counter()
    for row in ranks.tolist():
        for d in range(1, 4):
            counts[tuple(row[:d])] += 1
    template = fit_template(ranks, 12)
    assert check_template(template) == template  # every prefix is a tree
    assert [counts[p] for p in template] == sorted((counts[p] for p in template), reverse=True)
    assert min(counts[p] for p in template) >= max(
        c for p, c in counts.items() if p not in template
    )


def test_expected_tokens_walks_each_row_down_the_tree():
    ranks = torch.tensor([[0, 0, 5], [1, 0, 0], [0, 1, 0], [3, 0, 0]])
    template = [(0,), (0, 0), (1,), (0, 0, 0)]
    # rows accept depths 2, 1, 1, 0 -> tokens 3, 2, 2, 1
    assert expected_tokens(ranks, template) == pytest.approx((3 + 2 + 2 + 1) / 4)


def test_default_template_is_a_tree_of_the_best_guessed_paths():
    template = default_template(3, 15)
    assert len(template) == 15 and check_template(template) == template
    assert max(len(p) for p in template) <= 3

    def score(p):
        return torch.tensor([0.8 * 0.5 ** (k + 1) for k in p]).prod().item()

    every = [p for d in (1, 2, 3) for p in itertools.product(range(15), repeat=d)]
    best = sorted(every, key=score, reverse=True)
    assert sorted(score(p) for p in template) == pytest.approx(sorted(score(p) for p in best[:15]))


@pytest.mark.parametrize("bad", [[(0, 0)], [(0,), (0,)], [(-1,)], [()], [(1, 0), (1,)]])
def test_check_template_rejects_what_is_not_a_tree_in_order(bad):
    with pytest.raises(ValueError, match="tree node"):
        check_template(bad)


def test_template_order_is_kept_by_fitting_on_a_chain():
    """All-zero ranks: the fitted tree is the greedy chain, deepest last."""
    assert fit_template(torch.zeros(10, 3, dtype=torch.long), 8) == [(0,), (0, 0), (0, 0, 0)]
