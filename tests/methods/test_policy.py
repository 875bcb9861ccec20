"""The batch-aware draft-length policy: its choice against a brute-force maximisation of its own
objective, its cost table and acceptance estimate against their definitions, and, with a γ
drawn at random per request and step (0 included), exactness (greedy = ar in fp32) and cache
consistency against transformers after every step, for every method it drives."""

import itertools
import random
from dataclasses import dataclass, field

import pytest
from helpers import hf_model, noisy_copy
from test_cache_consistency import continue_equals_fresh
from test_heads import fitted_heads

from braid import LLM, MethodConfig, SamplingParams
from braid.methods.costs import PRIOR_SLOPE, AffineCost, PassCost
from braid.methods.policy import (
    MARGIN,
    Acceptance,
    DraftLengths,
    choose,
    expected_tokens,
    objective,
)


def flat(n):  # weight-bound: a pass costs the same whatever it holds
    return 1.0


def steep(n):  # compute-bound: every token costs as much as the pass's fixed part
    return 1.0 + n


def knee(n):  # flat up to 12 tokens, then steep (a CPU's roofline)
    return 1.0 if n <= 12 else 1.0 + 0.5 * (n - 12)


def table(points):
    cost = PassCost()
    for n, s in points:
        cost.observe(n, s)
    return cost


CASES = [
    # alphas, caps, base, verify, draft (d0, d1), width
    ([0.9], [5], 1, flat, None, 1),
    ([0.9], [5], 1, steep, None, 1),
    ([0.2, 0.95], [4, 4], 2, knee, None, 1),
    ([0.5, 0.5, 0.5], [3, 3, 3], 3, knee, (0.05, 0.01), 1),
    ([0.8, 0.3, 0.6, 0.99], [3, 2, 0, 4], 4, knee, (0.1, 0.0), 1),
    ([0.7, 0.7], [4, 4], 130, knee, None, 1),  # a prefill in the batch
    ([0.6, 0.9], [3, 3], 2, knee, (0.02, 0.005), 3),  # an MTAD tree: 3 tokens per depth
    ([0.4, 0.85, 0.7], [3, 3, 2], 3, table([(3, 1.0), (8, 1.1), (20, 3.0)]), None, 1),
    ([0.99, 0.99, 0.99, 0.99], [2, 2, 2, 2], 4, steep, (0.3, 0.0), 1),
    ([0.0, 0.0], [3, 3], 2, flat, None, 1),
]


def brute_force(alphas, caps, base, verify, draft, width, one_pass=False):
    """The objective's maximum over every γ vector, or the `ar` step's value when no draft
    beats that by the policy's margin."""
    values = [
        objective(alphas, gs, base, verify, draft, width, one_pass)
        for gs in itertools.product(*(range(c + 1) for c in caps))
    ]
    plain = values[0]  # all zeros
    return max(values) if max(values) > plain * (1 + MARGIN) else plain


@pytest.mark.parametrize("case", range(len(CASES)))
def test_the_choice_maximises_the_objective_as_brute_force_does(case):
    alphas, caps, base, verify, draft, width = CASES[case]
    got = choose(alphas, caps, base, verify, draft, width)
    assert all(0 <= g <= c for g, c in zip(got, caps))
    best = brute_force(alphas, caps, base, verify, draft, width)
    assert objective(alphas, got, base, verify, draft, width) == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("seed", range(30))
def test_random_cases_against_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 4)
    alphas = [rng.random() for _ in range(n)]
    caps = [rng.randint(0, 4) for _ in range(n)]
    fixed, slope, knee_at = rng.uniform(0.5, 2), rng.uniform(0, 1), rng.randint(1, 16)

    def verify(t):
        return fixed + slope * max(0, t - knee_at)

    draft = rng.choice([None, (rng.uniform(0, 0.3), rng.uniform(0, 0.05))])
    width, base = rng.choice([1, 1, 2, 4]), rng.randint(n, 3 * n)
    one_pass = rng.random() < 0.5  # CP heads: one draft pass whatever the length
    got = choose(alphas, caps, base, verify, draft, width, one_pass)
    best = brute_force(alphas, caps, base, verify, draft, width, one_pass)
    value = objective(alphas, got, base, verify, draft, width, one_pass)
    assert value == pytest.approx(best, rel=1e-12)


def test_the_objective_is_expected_tokens_over_modelled_time():
    # 2 requests: E = (1 + .5 + .25) + 1; time = d0 * 2 + d1 * 2 + verify(2 + 2)
    value = objective([0.5, 0.9], [2, 0], 2, steep, (0.1, 0.05))
    assert value == pytest.approx(2.75 / (0.2 + 0.1 + 5.0))
    # one draft pass (CP heads): d0 once, whatever the longest draft
    value = objective([0.5, 0.9], [2, 0], 2, steep, (0.1, 0.05), one_pass=True)
    assert value == pytest.approx(2.75 / (0.1 + 0.1 + 5.0))
    assert expected_tokens(0.5, 3) == pytest.approx(1.875)


def test_pass_cost_interpolates_what_it_measured_and_is_optimistic_elsewhere():
    cost = table([(4, 1.0), (12, 2.0)])
    assert cost(4) == 1.0 and cost(12) == 2.0
    assert cost(2) == 1.0  # below the smallest measured size: no cheaper
    assert cost(8) == pytest.approx(min(1.5, 1.0 * (1 + PRIOR_SLOPE * 4)))
    assert cost(20) == pytest.approx(2.0 * (1 + PRIOR_SLOPE * 8))
    cost.observe(4, 2.0)  # a new measurement moves the old one by (1 - decay)
    assert 1.0 < cost(4) < 2.0


def test_affine_cost_recovers_a_line_from_spread_sizes():
    cost = AffineCost()
    assert cost.coefficients() == (0.0, 0.0)  # unmeasured drafting looks free: it is tried
    for n in (1, 4, 8, 16, 32) * 6:
        cost.observe(n, 0.002 + 0.0001 * n)
    a, b = cost.coefficients()
    assert a == pytest.approx(0.002, rel=0.05) and b == pytest.approx(0.0001, rel=0.05)


def test_acceptance_estimates_the_per_token_rate_of_censored_geometric_draws():
    """α = 0.8 per token, 4-token drafts: kept = the run of successes before the first
    failure. The decayed estimate, averaged over 400 independent requests, is within 0.03."""
    rng, alpha, estimates = random.Random(0), 0.8, []
    for _ in range(400):
        acc = Acceptance()
        for _ in range(60):
            kept = next((i for i in range(4) if rng.random() >= alpha), 4)
            acc.record(4, kept)
        estimates.append(acc.alpha)
    assert sum(estimates) / len(estimates) == pytest.approx(alpha, abs=0.03)


def test_a_fixed_gamma_is_only_cut_to_the_caps():
    lengths = DraftLengths(gamma=3)
    assert lengths.choose([0, 1, 2], [5, 2, 0], 3) == [3, 2, 0]


def test_seeded_sampled_requests_get_their_gamma_alone_whatever_the_measured_costs():
    fast, slow = DraftLengths(), DraftLengths()
    for n in range(1, 40):
        fast.observe_verify(n, 1.0)  # flat: drafting is free
        slow.observe_verify(n, float(n * n))  # steep: drafting never pays
    got = [lengths.choose([0, 1], [6, 6], 2, pinned=[True, False]) for lengths in (fast, slow)]
    assert got[0][0] == got[1][0]  # the pinned request: the same γ under both
    assert got[0][1] > 0 and got[1][1] == 0  # the free one follows the measurements


@pytest.mark.parametrize("method", ["ngram", "spec"])
def test_a_seeded_sample_gives_the_same_tokens_alone_and_in_a_batch(llama_dir, method):
    llm = LLM(llama_dir, dtype="fp32", draft=llama_dir, max_batch=4)
    mine = SamplingParams(max_tokens=24, seed=7, ignore_eos=True)
    others = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (30, 5, 17)]
    prompts = ["x y x y x", "The quick", "def f(x): def", "emoji emoji"]
    alone = llm.generate(prompts[0], mine, method=method)[0]
    batch = llm.generate(prompts, [mine, *others], method=method)[0]
    assert batch.token_ids == alone.token_ids and alone.stats.draft_tokens > 0


# -- γ at random per request and step: exactness and caches -----------------------------------


@dataclass
class RandomLengths(DraftLengths):
    """A policy that draws γ uniformly in [0, cap] for every request and step."""

    rng: random.Random = field(default_factory=lambda: random.Random(0))
    drawn: list = field(default_factory=list)  # (cap, γ)

    def choose(self, ids, caps, base, pinned=None):
        gammas = [self.rng.randint(0, c) for c in caps]
        self.drawn += list(zip(caps, gammas))
        return gammas


def use_random_lengths(method, seed: int) -> RandomLengths:
    lengths = RandomLengths(width=method.lengths.width, rng=random.Random(seed))
    for holder in (method, getattr(method, "greedy", None)):  # mtad shares spec's policy
        if holder is not None:
            holder.lengths = lengths
    return lengths


@pytest.fixture(scope="module")
def noisy_draft(llama_dir, tmp_path_factory):
    return noisy_copy(llama_dir, tmp_path_factory.mktemp("noisy") / "draft", 0.03, seed=9)


@pytest.fixture(scope="module")
def heads_dir(llama_dir, tmp_path_factory):
    return fitted_heads(llama_dir, tmp_path_factory, rank=3)


@pytest.fixture(scope="module")
def random_llm(llama_dir, noisy_draft, heads_dir):
    return LLM(llama_dir, dtype="fp32", draft=noisy_draft, heads=heads_dir, max_batch=3)


TEXTS = ("The quick brown fox The quick", "def f(x): def", "emoji emoji", "x y x y")
GREEDY_LENGTHS = (30, 12, 24)


@pytest.fixture(scope="module")
def greedy_ar(random_llm):
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in GREEDY_LENGTHS]
    return [o.token_ids for o in random_llm.generate(list(TEXTS[:3]), params)]


@pytest.mark.parametrize(
    "method", ["spec", "block", "mtad", "mtad-tree", "heads", "heads-block", "ngram", "ngram-block"]
)
def test_random_gammas_keep_greedy_identity_and_caches(
    random_llm, llama_dir, noisy_draft, greedy_ar, method
):
    """Three greedy requests and one sampled (so mtad runs its beams), 3 at a time."""
    engine = random_llm._engine(MethodConfig(method, beams=3))
    lengths = use_random_lengths(engine.method, seed=len(method))
    target_ref = hf_model(llama_dir)
    drafter = getattr(engine.method, "drafter", None)
    draft_ref = hf_model(noisy_draft) if drafter is not None else None
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in GREEDY_LENGTHS]
    params.append(SamplingParams(max_tokens=20, seed=3, ignore_eos=True))
    reqs = [engine.add_request(random_llm.tokenizer.encode(t), p) for t, p in zip(TEXTS, params)]
    checked = 0
    while engine.has_unfinished:
        engine.step()
        for r in engine.running:
            continue_equals_fresh(engine.model, r.graph, r.all_ids, target_ref)
            if drafter is not None and r.id in drafter.graphs and drafter.graphs[r.id].length:
                continue_equals_fresh(drafter.model, drafter.graphs[r.id], r.all_ids, draft_ref)
            checked += 1
    assert [r.output_ids for r in reqs[:3]] == greedy_ar
    assert len(reqs[3].output_ids) == 20
    assert checked > 10
    assert any(c and not g for c, g in lengths.drawn)  # γ = 0 where a draft was possible
    assert any(g > 1 for _, g in lengths.drawn)
    assert sum(r.stats.accepted_tokens for r in reqs) > 0


def test_the_heads_draft_pass_is_timed_into_the_policy(random_llm):
    """CP heads cost a pass through the unembedding: the policy must see it, as one pass."""
    engine = random_llm._engine(MethodConfig("heads"))
    lengths = engine.method.lengths
    assert lengths.adaptive and lengths.one_pass and lengths.draft_cost
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    req = engine.add_request(random_llm.tokenizer.encode(TEXTS[0]), params)
    while engine.has_unfinished:
        engine.step()
    assert req.stats.draft_tokens > 0
    a, b = lengths.draft.coefficients()
    assert lengths.draft.measured and a > 0 and b >= 0
