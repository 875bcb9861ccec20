"""The CP heads' loss and draft marginals against brute-force enumeration of the mixture."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from braid.heads.draft import conditional_marginals
from braid.heads.loss import gather_targets, joint_nll, load_balance
from braid.heads.module import CPHeads, HeadsConfig

V, D = 5, 6


def tiny_heads(n: int, rank: int, base_first: bool = False, kind: str = "residual", seed=0):
    torch.manual_seed(seed)
    cfg = HeadsConfig(n=n, rank=rank, hidden_size=D, vocab_size=V, kind=kind, bottleneck=3)
    cfg.base_first = base_first
    heads = CPHeads(cfg, seed=seed).double()
    with torch.no_grad():  # make experts and positions visibly different
        for p in heads.parameters():
            p.add_(torch.randn_like(p) * 0.7)
    unembed_w = torch.randn(V, D, dtype=torch.float64)
    return heads, (lambda x: x @ unembed_w.t())


@torch.no_grad()
def brute_force_joint(heads, unembed, h: torch.Tensor) -> torch.Tensor:
    """The mixture as a full [V]*n probability table, built with products, not logs."""
    c = heads.config
    w = torch.softmax(heads.gate(h[None])[0], 0)
    probs = torch.zeros(c.n, c.rank, V, dtype=torch.float64)
    proj = heads.project(h[None])[0]  # [own, r, d]
    for s in range(c.n):
        for a in range(c.rank):
            if c.base_first and s == 0:
                logits = unembed(h)
            else:
                logits = unembed(proj[s - (1 if c.base_first else 0), a])
            probs[s, a] = torch.softmax(logits, 0)
    table = torch.zeros([V] * c.n, dtype=torch.float64)
    for xs in itertools.product(range(V), repeat=c.n):
        table[xs] = sum(
            w[a] * torch.prod(probs[torch.arange(c.n), a, list(xs)]) for a in range(c.rank)
        )
    return table


@pytest.mark.parametrize("base_first", [False, True])
@pytest.mark.parametrize("kind", ["residual", "linear"])
def test_joint_nll_equals_brute_force_mixture(base_first, kind):
    heads, unembed = tiny_heads(n=3, rank=3, base_first=base_first, kind=kind)
    h = torch.randn(4, D, dtype=torch.float64)
    targets = torch.randint(0, V, (4, 3))
    lp = gather_targets(heads.factor_log_probs(h, unembed), targets)
    ours = joint_nll(heads.log_weights(h).double(), lp)
    for i in range(4):
        table = brute_force_joint(heads, unembed, h[i])
        assert abs(float(table.sum()) - 1) < 1e-12
        ref = -torch.log(table[tuple(targets[i].tolist())])
        assert torch.allclose(ours[i], ref, atol=1e-10), (ours[i], ref)


def test_rank_one_is_the_sum_of_independent_log_likelihoods():
    heads, unembed = tiny_heads(n=4, rank=1)
    h = torch.randn(7, D, dtype=torch.float64)
    targets = torch.randint(0, V, (7, 4))
    lp = gather_targets(heads.factor_log_probs(h, unembed), targets)
    ours = joint_nll(heads.log_weights(h).double(), lp)
    proj = heads.project(h)[:, :, 0]  # [N, n, d]
    ref = sum(
        F.cross_entropy(unembed(proj[:, s]), targets[:, s], reduction="none") for s in range(4)
    )
    assert torch.allclose(ours, ref, atol=1e-10)


def test_skip_first_and_positions_select_the_same_factors():
    for base_first in (False, True):
        heads, unembed = tiny_heads(n=4, rank=2, base_first=base_first)
        h = torch.randn(3, D, dtype=torch.float64)
        full = heads.factor_log_probs(h, unembed)
        assert torch.allclose(heads.factor_log_probs(h, unembed, 3), full[:, :3])
        assert torch.allclose(heads.factor_log_probs(h, unembed, 3, skip_first=True), full[:, 1:3])


@pytest.mark.parametrize("rank", [1, 3])
def test_draft_marginals_equal_brute_force_conditionals(rank):
    n = 4
    heads, unembed = tiny_heads(n=n, rank=rank, seed=rank)
    h = torch.randn(D, dtype=torch.float64)
    table = brute_force_joint(heads, unembed, h)
    lp = heads.factor_log_probs(h[None], unembed)[0]
    log_w = heads.log_weights(h[None])[0].double()
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        ys = torch.randint(0, V, (n - 1,), generator=gen).tolist()
        ours = conditional_marginals(log_w, lp.exp(), ys)
        for s in range(1, n):  # q for position s + 1 given y_1..y_s
            block = table[tuple(ys[:s])]  # [V]*(n - s)
            marg = block.sum(dim=tuple(range(1, block.dim()))) if block.dim() > 1 else block
            assert torch.allclose(ours[s - 1].double(), marg / marg.sum(), atol=1e-6)


def test_load_balance_is_one_when_balanced_and_r_when_collapsed():
    r = 4
    balanced = torch.log(torch.eye(r) * 0.96 + 0.01)  # each expert tops one row, mean 1/r
    assert abs(float(load_balance(balanced)) - 1.0) < 1e-6
    collapsed = torch.log(torch.tensor([[0.97, 0.01, 0.01, 0.01]] * 8))
    assert abs(float(load_balance(collapsed)) - r * 0.97) < 1e-6
    # the gradient lowers the weight of the over-used expert
    logits = torch.zeros(8, r, requires_grad=True)
    with torch.no_grad():
        logits[:, 0] = 2.0
    load_balance(torch.log_softmax(logits, -1)).backward()
    assert (logits.grad[:, 0] > 0).all()
