"""MTAD: beam-sampled drafts, joint verification (chain and tree), and what it promises."""

import pytest
import torch
from helpers import noisy_copy
from test_speculative import exact_two_token_distribution

from braid import LLM, MethodConfig, SamplingParams
from braid.methods.mtad import draw_distinct

PROMPTS = ["The quick brown fox", "def", "Ünïcödé façade, naïve", "x", "emoji 🙂🚀"]


@pytest.fixture(scope="module")
def noisy_draft(llama_dir, tmp_path_factory):
    """The target with noisy weights: partial agreement under greedy decoding."""
    return noisy_copy(llama_dir, tmp_path_factory.mktemp("noisy") / "draft", 0.035, seed=9)


@pytest.mark.parametrize("method", ["mtad", "mtad-tree"])
@pytest.mark.parametrize("gamma", [1, 4, "auto"])
def test_greedy_equals_ar_with_continuous_batching(llama_dir, noisy_draft, method, gamma):
    llm = LLM(llama_dir, dtype="fp32", draft=noisy_draft, max_batch=2)
    params = [
        SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (9, 40, 3, 25, 17)
    ]
    ar = llm.generate(PROMPTS, params)
    out = llm.generate(PROMPTS, params, method=MethodConfig(method, gamma=gamma, beams=3))
    assert [o.token_ids for o in out] == [a.token_ids for a in ar]
    proposed = sum(o.stats.draft_tokens for o in out)
    accepted = sum(o.stats.accepted_tokens for o in out)
    if gamma != "auto":  # "auto" rightly stops drafting: this draft costs what the target does
        assert 0 < accepted < proposed


@pytest.mark.parametrize("method", ["mtad", "mtad-tree"])
def test_greedy_requests_beside_sampled_ones_take_the_beam_path_and_equal_ar(
    llama_dir, noisy_draft, method
):
    """An all-greedy batch runs spec's width-1 step; a mixed one beam-samples, and its greedy
    requests must still come out as ar's."""
    llm = LLM(llama_dir, dtype="fp32", draft=noisy_draft, max_batch=4)
    greedy = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (9, 40, 25)]
    sampled = SamplingParams(max_tokens=40, seed=1, ignore_eos=True)
    ar = llm.generate(PROMPTS[:3], greedy)
    out = llm.generate(
        PROMPTS[:4], [*greedy, sampled], method=MethodConfig(method, gamma=3, beams=3)
    )
    assert [o.token_ids for o in out[:3]] == [a.token_ids for a in ar]
    assert all(o.stats.accepted_tokens > 0 for o in out)


def test_draws_are_distinct_and_follow_the_weights():
    weights = torch.tensor([0.5, 0.0, 0.3, 0.2], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    firsts = torch.zeros(4)
    for _ in range(4000):
        picks = draw_distinct(weights, 3, gen)
        assert len(set(picks.tolist())) == 3 and 1 not in picks.tolist()
        firsts[picks[0]] += 1
    assert torch.allclose(firsts / 4000, weights.float(), atol=0.03)
    assert draw_distinct(torch.tensor([0.0, 1.0]), 4, gen).tolist() == [1]


@pytest.mark.parametrize("method", ["mtad", "mtad-tree"])
def test_sampling_with_an_unreachable_threshold_is_plain_target_sampling(
    llama_dir, noisy_draft, method
):
    """tau = 1e9 rejects every draft, so each token comes from the target: TV < 0.12 (800 runs)."""
    llm = LLM(llama_dir, dtype="fp32", draft=noisy_draft, max_batch=8)
    prompt = llm.tokenizer.encode("The quick brown")
    exact = exact_two_token_distribution(llama_dir, prompt, top_k=4)
    n = 800
    params = [SamplingParams(max_tokens=2, top_k=4, seed=s, ignore_eos=True) for s in range(n)]
    outs = llm.generate([prompt] * n, params, method=MethodConfig(method, gamma=3, tau=1e9))
    counts = {}
    for o in outs:
        counts[tuple(o.token_ids)] = counts.get(tuple(o.token_ids), 0) + 1
    tv = 0.5 * sum(abs(counts.get(k, 0) / n - exact.get(k, 0.0)) for k in set(counts) | set(exact))
    assert tv < 0.12, tv
    assert sum(o.stats.accepted_tokens for o in outs) == 0


@pytest.mark.parametrize("gamma", [4, "auto"])
@pytest.mark.parametrize("method", ["spec", "block", "mtad", "mtad-tree"])
def test_sampling_runs_up_to_the_context_limit(llama_dir, noisy_draft, method, gamma):
    """Beams widen what a step holds in the caches (W rows per draft pass, W * gamma tree
    nodes): near the context end the draft must shrink, not overflow the cache."""
    llm = LLM(llama_dir, dtype="fp32", draft=noisy_draft, max_batch=2)
    context = 256  # the tiny model's max_position_embeddings
    prompts = [list(range(3, 3 + context - 20)), list(range(5, 5 + context - 9))]
    params = [SamplingParams(max_tokens=100, seed=s, ignore_eos=True) for s in (1, 2)]
    outs = llm.generate(prompts, params, method=MethodConfig(method, gamma=gamma, beams=4))
    assert [len(o.token_ids) for o in outs] == [20, 9]
    assert all(o.finish_reason == "length" for o in outs)
    assert sum(o.stats.draft_tokens for o in outs) > 0
