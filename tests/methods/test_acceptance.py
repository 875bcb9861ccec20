"""Acceptance rules, checked by enumerating their exact output distribution on a tiny vocabulary.

The reference is the target model itself: the probability of every output sequence under plain
sampling, prod_t p(x_t | x_<t). The rules' output distribution is computed exactly by enumerating
every draft and integrating over the independent uniforms analytically (each u_i passes its
threshold with probability h_i), then continuing from the new context until N tokens exist.
"""

import itertools

import pytest
import torch

from braid.methods.acceptance import block, joint_threshold, token_level

V, GAMMA, N = 3, 2, 3


def random_model(seed: int, peaked: bool = False):
    """A 'language model' on V tokens: a distribution for every context, as a lookup table."""
    gen = torch.Generator().manual_seed(seed)
    table = {}

    def dist(ctx: tuple) -> torch.Tensor:
        if ctx not in table:
            logits = torch.randn(V, generator=gen, dtype=torch.float64) * (3 if peaked else 1)
            table[ctx] = torch.softmax(logits, 0)
        return table[ctx]

    return dist


def target_sequence_probs(p, n):
    return {
        seq: float(torch.tensor([p(seq[:t])[seq[t]] for t in range(n)]).prod())
        for seq in itertools.product(range(V), repeat=n)
    }


def step_outcomes(rule, p, q, ctx):
    """Exact distribution of the tokens one verification step emits from context ctx."""
    out = {}
    for draft in itertools.product(range(V), repeat=GAMMA):
        q_rows = torch.stack([q(ctx + draft[:j]) for j in range(GAMMA)])
        p_rows = torch.stack([p(ctx + draft[:j]) for j in range(GAMMA + 1)])
        d = torch.tensor(draft)
        prob_draft = float(q_rows[torch.arange(GAMMA), d].prod())
        plan = rule(d, q_rows, p_rows)
        h = plan.thresholds.double()
        for tau in range(GAMMA + 1):
            if plan.keep == "prefix":  # accept the first tau, reject the next (if any)
                p_tau = float(h[:tau].prod() * (1 - h[tau] if tau < GAMMA else 1))
            else:  # tau is the last passing index: it passes and all later ones fail
                p_tau = float((h[tau - 1] if tau > 0 else 1) * (1 - h[tau:]).prod())
            for x in range(V):
                pr = prob_draft * p_tau * float(plan.residuals[tau, x])
                if pr > 0:
                    key = draft[:tau] + (x,)
                    out[key] = out.get(key, 0.0) + pr
    return out


def rule_sequence_probs(rule, p, q, n, ctx=()):
    """Probability of each length-n output under repeated steps of `rule`."""
    if len(ctx) >= n:
        return {ctx[:n]: 1.0}
    total = {}
    for emitted, pr in step_outcomes(rule, p, q, ctx).items():
        for seq, sub in rule_sequence_probs(rule, p, q, n, ctx + emitted).items():
            total[seq] = total.get(seq, 0.0) + pr * sub
    return total


@pytest.mark.parametrize("rule", [token_level, block], ids=["token_level", "block"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_rules_reproduce_the_target_distribution(rule, seed):
    p, q = random_model(100 + seed, peaked=seed == 2), random_model(200 + seed)
    ours = rule_sequence_probs(rule, p, q, N)
    ref = target_sequence_probs(p, N)
    assert abs(sum(ours.values()) - 1) < 1e-9
    for seq, pr in ref.items():
        assert ours.get(seq, 0.0) == pytest.approx(pr, abs=1e-9), seq


def test_a_wrong_rule_is_caught_by_this_enumeration():
    """Sanity check of the test itself: accepting every draft is visibly not exact."""

    def accept_all(draft, q_rows, p_rows):
        plan = token_level(draft, q_rows, p_rows)
        plan.thresholds = torch.ones_like(plan.thresholds)
        return plan

    p, q = random_model(7), random_model(8)
    ours = rule_sequence_probs(accept_all, p, q, N)
    ref = target_sequence_probs(p, N)
    assert max(abs(ours.get(s, 0) - r) for s, r in ref.items()) > 1e-3


def expected_accepted(rule, p, q):
    total = 0.0
    for draft in itertools.product(range(V), repeat=GAMMA):
        q_rows = torch.stack([q(draft[:j]) for j in range(GAMMA)])
        p_rows = torch.stack([p(draft[:j]) for j in range(GAMMA + 1)])
        d = torch.tensor(draft)
        plan = rule(d, q_rows, p_rows)
        h = plan.thresholds.double()
        for tau in range(1, GAMMA + 1):
            if plan.keep == "prefix":
                p_tau = float(h[:tau].prod() * (1 - h[tau] if tau < GAMMA else 1))
            else:
                p_tau = float(h[tau - 1] * (1 - h[tau:]).prod())
            total += float(q_rows[torch.arange(GAMMA), d].prod()) * p_tau * tau
    return total


@pytest.mark.parametrize("seed", range(6))
def test_block_accepts_at_least_as_many_tokens_as_token_level(seed):
    p, q = random_model(300 + seed), random_model(400 + seed)
    assert expected_accepted(block, p, q) >= expected_accepted(token_level, p, q) - 1e-12


def one_hot(i):
    return torch.nn.functional.one_hot(torch.tensor(i), V).double()


@pytest.mark.parametrize("rule", [token_level, block], ids=["token_level", "block"])
def test_greedy_distributions_accept_exactly_the_matching_prefix(rule):
    draft = torch.tensor([2, 1])
    q = torch.stack([one_hot(2), one_hot(1)])
    p = torch.stack([one_hot(2), one_hot(0), one_hot(1)])  # target agrees on y_1 only
    plan = rule(draft, q, p)
    u = torch.tensor([0.999, 0.0])
    assert plan.decide(u) == 1
    assert torch.equal(plan.residuals[1], one_hot(0))  # the target's own greedy token


def test_decide_follows_the_thresholds():
    p_rows = torch.full((4, V), 1 / V, dtype=torch.float64)
    plan = token_level(torch.tensor([0, 1, 2]), p_rows[:3], p_rows)
    plan.thresholds = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    assert plan.decide(torch.tensor([0.1, 0.7, 0.1])) == 1
    plan.keep = "last"
    assert plan.decide(torch.tensor([0.1, 0.7, 0.1])) == 3
    assert plan.decide(torch.tensor([0.9, 0.7, 0.6])) == 0


def test_joint_threshold_keeps_the_longest_prefix_above_tau():
    ratios = torch.tensor([0.8, 0.4, 2.0])  # joint ratios 0.8, 0.32, 0.64
    assert joint_threshold(ratios, tau=0.5) == 3  # the largest i, not the first failure
    assert joint_threshold(ratios, tau=0.7) == 1
    assert joint_threshold(ratios, tau=0.9) == 0
