"""Per-request controls under every method: logprobs, min_tokens and num_speculative_tokens.

References: transformers' full-sequence logits (their log-softmax; the temperature and top-k
distribution written out by hand) and a brute-force greedy loop that masks the stop ids.
"""

import pytest
import torch
from helpers import hf_model, noisy_copy
from test_heads import fitted_heads

from braid import LLM, MethodConfig, SamplingParams

PROMPTS = ["The quick brown fox", "def", "Ünïcödé façade, naïve", "emoji 🙂🚀"]
METHODS = ["ar", "spec", "block", "mtad", "mtad-tree", "heads", "heads-tree", "ngram"]


@pytest.fixture(scope="module")
def llm(llama_dir, tmp_path_factory):
    draft = noisy_copy(llama_dir, tmp_path_factory.mktemp("near") / "draft", 0.02, seed=5)
    heads = fitted_heads(llama_dir, tmp_path_factory, rank=3)
    return LLM(llama_dir, dtype="fp32", draft=draft, heads=heads, max_batch=2)


@pytest.fixture(scope="module")
def ref(llama_dir):
    return hf_model(llama_dir)


def reference_logits(ref, prompt: list[int], output: list[int]) -> torch.Tensor:
    """[len(output), V]: transformers' logits that scored each output token."""
    with torch.no_grad():
        logits = ref(torch.tensor([prompt + output])).logits[0]
    return logits[len(prompt) - 1 : len(prompt) + len(output) - 1]


def method(name: str) -> MethodConfig | str:
    return name if name == "ar" else MethodConfig(name, gamma=4)


@pytest.mark.parametrize("name", METHODS)
def test_greedy_logprobs_are_the_targets_log_softmax(llm, ref, name):
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=3)
    outs = llm.generate(PROMPTS, params, method=method(name))
    for prompt, out in zip(PROMPTS, outs):
        ids = llm.tokenizer.encode(prompt)
        o = out.outputs[0]
        assert [lp.token_id for lp in o.logprobs] == o.token_ids
        want = torch.log_softmax(reference_logits(ref, ids, o.token_ids).double(), -1)
        got = torch.tensor([lp.logprob for lp in o.logprobs], dtype=torch.float64)
        chosen = want[torch.arange(len(o.token_ids)), torch.tensor(o.token_ids)]
        torch.testing.assert_close(got, chosen, atol=1e-4, rtol=0)
        for lp, row in zip(o.logprobs, want):
            values, top = row.topk(3)
            assert [i for i, _ in lp.top] == top.tolist()
            torch.testing.assert_close(
                torch.tensor([v for _, v in lp.top], dtype=torch.float64), values, atol=1e-4, rtol=0
            )
    if name != "ar":  # the drafts were used, so the rows came from verify passes
        assert sum(o.stats.accepted_tokens for o in outs) > 0


@pytest.mark.parametrize("name", ["ar", "spec", "heads", "ngram", "mtad"])
def test_sampled_logprobs_are_those_of_the_processed_distribution(llm, ref, name):
    params = [
        SamplingParams(max_tokens=10, temperature=0.7, top_k=5, seed=s, ignore_eos=True, logprobs=6)
        for s in range(len(PROMPTS))
    ]
    outs = llm.generate(PROMPTS, params, method=method(name))
    for prompt, out in zip(PROMPTS, outs):
        o = out.outputs[0]
        scores = reference_logits(ref, llm.tokenizer.encode(prompt), o.token_ids).double() / 0.7
        kth = scores.topk(5).values[:, -1:]
        want = torch.log_softmax(scores.masked_fill(scores < kth, float("-inf")), -1)
        for j, lp in enumerate(o.logprobs):
            assert lp.logprob == pytest.approx(float(want[j, lp.token_id]), abs=1e-4)
            assert len(lp.top) == 6 and lp.top[5][1] == float("-inf")  # only 5 have mass
            assert sorted(i for i, _ in lp.top[:5]) == sorted(want[j].topk(5).indices.tolist())


def brute_force_min_tokens(ref, prompt: list[int], stop: int, min_tokens: int, limit: int):
    out: list[int] = []
    while len(out) < limit:
        with torch.no_grad():
            logits = ref(torch.tensor([prompt + out])).logits[0, -1]
        if len(out) < min_tokens:
            logits[stop] = float("-inf")
        out.append(int(logits.argmax()))
        if out[-1] == stop and len(out) >= min_tokens:
            break
    return out


@pytest.mark.parametrize("name", METHODS)
def test_min_tokens_holds_the_stop_ids_back(llm, ref, name):
    prompt = llm.tokenizer.encode(PROMPTS[0])
    free = llm.generate([prompt], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    stop = free[0].token_ids[1]  # without min_tokens the request stops after two tokens
    params = SamplingParams(
        max_tokens=30, temperature=0, ignore_eos=True, stop_token_ids=[stop], min_tokens=8
    )
    out = llm.generate([prompt], params, method=method(name))[0]
    want = brute_force_min_tokens(ref, prompt, stop, 8, 30)
    assert stop not in want[:8] and len(want) > 8  # the mask changed the text
    assert out.token_ids == want


def test_min_tokens_holds_stop_strings_back(llm):
    prompt = llm.tokenizer.encode(PROMPTS[1])
    free = llm.generate([prompt], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
    word = llm.tokenizer.decode(free[0].token_ids[:1])
    cut = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop=[word])
    assert llm.generate([prompt], cut)[0].text == ""
    held = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop=[word], min_tokens=5)
    out = llm.generate([prompt], held)[0]
    assert len(out.token_ids) >= 5
    assert out.token_ids == free[0].token_ids[: len(out.token_ids)]
    # what follows min_tokens is searched again: the text ends before the next `word`
    rest = llm.tokenizer.decode(free[0].token_ids)
    if word in rest[len(llm.tokenizer.decode(free[0].token_ids[:5])) :]:
        assert out.finish_reason == "stop" and word not in out.text[len(out.text) - len(word) :]


@pytest.mark.parametrize("name", ["spec", "mtad", "heads", "heads-tree"])
def test_num_speculative_tokens_caps_each_requests_drafts(llm, name):
    """(`ngram` takes its caps from the same `DraftLengths.plan`, but on a random model its
    matches are too short for a cap of 2 to bind.)"""
    prompts = PROMPTS[:3]
    base = dict(max_tokens=24, temperature=0, ignore_eos=True)
    caps = [0, 2, None]
    params = [SamplingParams(num_speculative_tokens=c, **base) for c in caps]
    ar = llm.generate(prompts, SamplingParams(**base))
    outs = llm.generate(prompts, params, method=method(name))
    assert [o.token_ids for o in outs] == [a.token_ids for a in ar]
    off, two, free = (o.stats for o in outs)
    assert off.draft_tokens == 0 and off.passes == off.generated_tokens
    assert 0 < two.draft_tokens <= 2 * two.drafts and len(two.accepted_per_pos) <= 2
    assert len(free.accepted_per_pos) > 2  # the method's own length (gamma 4; heads: n - 1 = 3)


def test_multiverse_refuses_logprobs_and_min_tokens(mv_llm):
    for kw in (dict(logprobs=0), dict(min_tokens=2)):
        with pytest.raises(Exception, match="not supported with method 'multiverse'"):
            mv_llm.generate(["x"], SamplingParams(max_tokens=4, **kw), method="multiverse")


@pytest.mark.parametrize(
    "kw",
    [
        dict(min_tokens=-1),
        dict(min_tokens=9, max_tokens=8),
        dict(logprobs=21),
        dict(logprobs=1.5),
        dict(num_speculative_tokens=-1),
        dict(num_speculative_tokens=True),
    ],
)
def test_bad_controls_are_refused(kw):
    with pytest.raises(Exception, match="min_tokens|logprobs|num_speculative_tokens"):
        SamplingParams(**kw)
