"""Prompt lookup (`ngram`, `ngram-block`): the matcher against a brute-force search, the exact
rules with a point-mass draft by enumeration, greedy identity with `ar` (fp32, the bundled code
model and the default SmolLM2), and sampling against the target's exact distribution."""

import random

import pytest
import torch
from helpers import hf_model
from test_acceptance import V, one_hot, random_model, target_sequence_probs
from test_speculative import exact_two_token_distribution

from braid import LLM, MethodConfig, SamplingParams
from braid.methods.acceptance import block, token_level
from braid.methods.ngram import NgramIndex, lookup, point_masses


def brute_force_lookup(ids, k, max_n, min_n):
    """From the definition: the longest suffix (max_n..min_n tokens) that also occurs earlier;
    of its earlier occurrences the one that starts last; the k tokens after it."""
    length = len(ids)
    for n in range(max_n, min_n - 1, -1):
        suffix = ids[length - n :] if n <= length else None
        starts = [s for s in range(length - n) if suffix is not None and ids[s : s + n] == suffix]
        if starts:
            return ids[max(starts) + n : max(starts) + n + k]
    return []


@pytest.mark.parametrize("seed", range(40))
def test_matcher_equals_a_brute_force_search_as_the_text_grows(seed):
    rng = random.Random(seed)
    vocab = rng.choice([2, 3, 5, 12])
    max_n = rng.randint(1, 4)
    min_n = rng.randint(1, max_n)
    ids = [rng.randrange(vocab) for _ in range(rng.randint(0, 8))]
    index = NgramIndex(max_n, min_n)
    hits = 0
    for _ in range(30):
        k = rng.randint(0, 6)
        want = brute_force_lookup(ids, k, max_n, min_n)
        assert index.propose(ids, k) == want, (ids, k, max_n, min_n)
        assert lookup(ids, k, max_n, min_n) == want
        hits += bool(want)
        ids += [rng.randrange(vocab) for _ in range(rng.randint(1, 3))]
    assert hits or vocab == 12  # repeats in a small vocabulary are found


def test_the_longest_match_wins_and_then_the_latest():
    ids = [7, 1, 2, 9, 5, 2, 8, 1, 2]
    assert lookup(ids, 3) == [9, 5, 2]  # "1 2" (n=2) beats the later "2" (n=1)
    assert lookup([4, 2, 6, 2, 5, 2], 2) == [5, 2]  # the latest "2", not the first
    assert lookup([1, 2, 3], 4) == []


@pytest.mark.parametrize("rule", [token_level, block], ids=["token_level", "block"])
def test_a_point_mass_draft_reduces_token_level_to_accept_with_p(rule):
    """Single-token drafts: both rules accept y with probability p(y) and otherwise draw
    from p without y, renormalised (the closed form, computed here by hand)."""
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)
    plan = rule(torch.tensor([1]), torch.stack(point_masses([1], 3)).double(), p)
    assert float(plan.thresholds[0]) == pytest.approx(0.3)
    assert plan.residuals[0].tolist() == pytest.approx([0.5 / 0.7, 0.0, 0.2 / 0.7])
    assert plan.residuals[1].tolist() == pytest.approx(p[1].tolist())


PROMPT, GAMMA, N = (0, 1, 2, 0, 1), 3, 3


def lookup_step_outcomes(rule, p, ctx):
    """Exact distribution of what one prompt-lookup step emits from ctx: the draft is a
    function of ctx, the uniforms are integrated analytically."""
    draft = tuple(lookup(list(ctx), GAMMA))
    k = len(draft)
    p_rows = torch.stack([p(ctx + draft[:j]) for j in range(k + 1)])
    if not k:
        return {(x,): float(p_rows[0, x]) for x in range(V)}
    plan = rule(torch.tensor(draft), torch.stack([one_hot(y) for y in draft]), p_rows)
    h = plan.thresholds.double()
    out = {}
    for tau in range(k + 1):
        if plan.keep == "prefix":
            p_tau = float(h[:tau].prod() * (1 - h[tau] if tau < k else 1))
        else:
            p_tau = float((h[tau - 1] if tau > 0 else 1) * (1 - h[tau:]).prod())
        for x in range(V):
            key = draft[:tau] + (x,)
            out[key] = out.get(key, 0.0) + p_tau * float(plan.residuals[tau, x])
    return out


def lookup_sequence_probs(rule, p, ctx, n):
    if len(ctx) - len(PROMPT) >= n:
        return {ctx[len(PROMPT) :][:n]: 1.0}
    total = {}
    for emitted, pr in lookup_step_outcomes(rule, p, ctx).items():
        for seq, sub in lookup_sequence_probs(rule, p, ctx + emitted, n).items():
            total[seq] = total.get(seq, 0.0) + pr * sub
    return total


@pytest.mark.parametrize("rule", [token_level, block], ids=["token_level", "block"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prompt_lookup_with_exact_rules_reproduces_the_target_distribution(rule, seed):
    p = random_model(500 + seed, peaked=seed == 2)
    ours = lookup_sequence_probs(rule, p, PROMPT, N)
    ref = target_sequence_probs(lambda ctx: p(PROMPT + ctx), N)
    assert abs(sum(ours.values()) - 1) < 1e-9
    for seq, pr in ref.items():
        assert ours.get(seq, 0.0) == pytest.approx(pr, abs=1e-9), seq


REPEATING = [
    "import os\n\ndef main():\n    path = os.path.join(",
    "class A:\n    def __init__(self, x):\n        self.x = x\n\nclass B:\n    def __init__(",
    "for i in range(10):\n    print(i)\nfor j in range(10):",
    "x",
    "a = [1, 2, 3]\nb = [1, 2, 3]\nc = [",
]


LENGTHS = (30, 41, 25, 12, 33)


def greedy(lengths):
    return [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lengths]


@pytest.fixture(scope="module")
def code_llm():
    return LLM("code-23m", dtype="fp32", max_batch=2)


@pytest.fixture(scope="module")
def code_ar(code_llm):
    return code_llm.generate(REPEATING, greedy(LENGTHS))


def assert_greedy_identity(llm, prompts, lengths, method, gamma, ar=None):
    params = greedy(lengths)
    ar = ar if ar is not None else llm.generate(prompts, params)
    out = llm.generate(prompts, params, method=MethodConfig(method, gamma=gamma))
    for a, o in zip(ar, out):
        assert o.token_ids == a.token_ids
    proposed = sum(o.stats.draft_tokens for o in out)
    accepted = sum(o.stats.accepted_tokens for o in out)
    assert 0 < accepted < proposed  # copies were kept and rejected: both paths ran
    return out


@pytest.mark.parametrize("method", ["ngram", "ngram-block"])
@pytest.mark.parametrize("gamma", [1, 5])
def test_greedy_is_token_identical_to_ar_on_the_code_model(code_llm, code_ar, method, gamma):
    assert_greedy_identity(code_llm, REPEATING, LENGTHS, method, gamma, code_ar)


def test_greedy_is_token_identical_to_ar_on_the_default_model_in_fp32():
    llm = LLM(dtype="fp32", max_batch=2)
    prompts = [
        llm.chat_prompt([{"role": "user", "content": "Repeat exactly: the cat sat on the mat."}]),
        "List the days of the week: Monday, Tuesday, Wednesday,",
        "1, 2, 3, 4, 5,",
    ]
    out = assert_greedy_identity(llm, prompts, (20, 24, 16), "ngram", 4)
    assert sum(o.stats.passes for o in out) < sum(len(o.token_ids) for o in out)


def lookup_friendly_prompt(model_dir, tokenizer, top_k):
    """'The quick brown a t a': lookup drafts t first. t is picked (from the reference model)
    in the target's top-k after the prompt, so drafts are sometimes kept."""
    ref = hf_model(model_dir)
    base, a = tokenizer.encode("The quick brown"), 40
    cands = [t for t in range(3, 300) if t != a and t not in base]
    with torch.no_grad():
        logits = ref(torch.tensor([base + [a, t, a] for t in cands])).logits[:, -1]
    probs = torch.softmax(logits.double(), -1)
    scores = [float(probs[i, t]) for i, t in enumerate(cands)]
    ranks = [int((logits[i] > logits[i, t]).sum()) for i, t in enumerate(cands)]
    best = max((i for i in range(len(cands)) if ranks[i] < top_k), key=scores.__getitem__)
    return base + [a, cands[best], a]


@pytest.mark.parametrize("method", ["ngram", "ngram-block"])
def test_sampling_matches_the_target_distribution(llama_dir, method):
    """800 seeded runs; total variation to the exact joint of the first two tokens < 0.12
    (sampling noise alone gives about 0.05 over 16 outcomes)."""
    llm = LLM(llama_dir, dtype="fp32", max_batch=8)
    prompt = lookup_friendly_prompt(llama_dir, llm.tokenizer, top_k=4)
    exact = exact_two_token_distribution(llama_dir, prompt, top_k=4)
    n = 800
    params = [SamplingParams(max_tokens=2, top_k=4, seed=s, ignore_eos=True) for s in range(n)]
    outs = llm.generate([prompt] * n, params, method=MethodConfig(method, gamma=3))
    counts = {}
    for o in outs:
        counts[tuple(o.token_ids)] = counts.get(tuple(o.token_ids), 0) + 1
    tv = 0.5 * sum(abs(counts.get(k, 0) / n - exact.get(k, 0.0)) for k in set(counts) | set(exact))
    assert tv < 0.12, tv
    proposed = sum(o.stats.draft_tokens for o in outs)
    accepted = sum(o.stats.accepted_tokens for o in outs)
    assert 0 < accepted < proposed


def test_lookup_runs_on_a_model_that_has_no_draft_or_heads(llama_dir):
    llm = LLM(llama_dir, dtype="fp32")
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    ar = llm.generate("x y x y", params)[0]
    out = llm.generate("x y x y", params, method="ngram-block")[0]
    assert out.token_ids == ar.token_ids and out.stats.draft_tokens > 0
