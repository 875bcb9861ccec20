"""Draft-model speculative decoding end to end: greedy identity with `ar`, exact sampling."""

import pytest
import torch
from helpers import hf_model, make_hf_model, noisy_copy, seeded_two_token_runs

from braid import LLM, InvalidRequestError, MethodConfig, ModelLoadError, SamplingParams

PROMPTS = ["The quick brown fox", "def", "Ünïcödé façade, naïve", "x", "emoji 🙂🚀"]


@pytest.fixture(scope="module")
def near_draft(llama_dir, tmp_path_factory):
    """The target with noisy weights: agrees often, not always (partial acceptance)."""
    return noisy_copy(llama_dir, tmp_path_factory.mktemp("near") / "draft", 0.02, seed=5)


@pytest.mark.parametrize("method", ["spec", "block"])
@pytest.mark.parametrize("gamma", [1, 3, 6, "auto"])
def test_greedy_is_token_identical_to_ar_with_continuous_batching(
    llama_dir, near_draft, method, gamma
):
    llm = LLM(llama_dir, dtype="fp32", draft=near_draft, max_batch=2)
    params = [
        SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (9, 40, 3, 25, 17)
    ]
    ar = llm.generate(PROMPTS, params)
    out = llm.generate(PROMPTS, params, method=MethodConfig(method, gamma=gamma))
    for a, o in zip(ar, out):
        assert o.token_ids == a.token_ids
    stats = [o.stats for o in out]
    if gamma == "auto":  # rightly stops drafting: this draft costs what the target does
        return
    proposed = sum(s.draft_tokens for s in stats)
    accepted = sum(s.accepted_tokens for s in stats)
    assert 0 < accepted < proposed  # partial acceptance: the rollback paths really ran
    assert all(s.passes < s.generated_tokens for s in stats if s.generated_tokens > 10)


def test_a_fixed_gamma_must_be_positive(llama_dir, near_draft):
    llm = LLM(llama_dir, dtype="fp32", draft=near_draft)
    with pytest.raises(InvalidRequestError, match="gamma"):
        llm.generate(PROMPTS[:1], SamplingParams(max_tokens=3), method=MethodConfig("spec", 0))


def exact_two_token_distribution(model_dir, prompt_ids, top_k):
    """p(x1, x2 | prompt) under the processed (top-k) target distribution, from transformers."""
    ref = hf_model(model_dir)

    def processed(ids):
        with torch.no_grad():
            logits = ref(torch.tensor([ids])).logits[0, -1].double()
        kth = logits.topk(top_k).values[-1]
        return torch.softmax(logits.masked_fill(logits < kth, float("-inf")), 0)

    p1 = processed(prompt_ids)
    joint = {}
    for x1 in p1.nonzero().flatten().tolist():
        p2 = processed(prompt_ids + [x1])
        for x2 in p2.nonzero().flatten().tolist():
            joint[(x1, x2)] = float(p1[x1] * p2[x2])
    return joint


@pytest.mark.parametrize("method", ["spec", "block"])
def test_sampling_matches_the_target_distribution(llama_dir, tmp_path, method):
    """800 seeded runs; total variation to the exact joint of the first two tokens < 0.12.

    With 16 outcomes the sampling noise alone gives a TV of about 0.05; a rule that kept the
    (unrelated) draft's tokens would be near 1.
    """
    far = make_hf_model("llama", tmp_path / "far", seed=11, num_hidden_layers=1)
    llm = LLM(llama_dir, dtype="fp32", draft=far, max_batch=8)
    prompt = llm.tokenizer.encode("The quick brown")
    exact = exact_two_token_distribution(llama_dir, prompt, top_k=4)
    n = 800
    outs, counts, tv = seeded_two_token_runs(llm, prompt, exact, MethodConfig(method, gamma=3), n)
    assert tv < 0.12, tv
    assert sum(o.stats.draft_tokens for o in outs) > 0


def test_a_draft_with_another_tokenizer_is_refused(llama_dir, tmp_path):
    import json

    other = make_hf_model("llama", tmp_path / "other", seed=3)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = "a", "b"
    vocab[a], vocab[b] = vocab[b], vocab[a]  # ids 'a' and 'b' now mean each other's string
    (other / "tokenizer.json").write_text(json.dumps(tok))
    llm = LLM(llama_dir, dtype="fp32", draft=other)
    with pytest.raises(ModelLoadError, match="tokenizers differ"):
        llm.generate("hi", method="spec")


def test_speculative_methods_need_a_draft(llama_dir):
    """Only the bundled code model has a default draft; any other model must name one."""
    with pytest.raises(ModelLoadError, match="no draft model ships for .*--draft DIR"):
        LLM(llama_dir, dtype="fp32").generate("hi", method="block")


@pytest.mark.parametrize("method", ["spec", "block", "mtad", "mtad-tree"])
def test_accepted_counts_only_drafted_tokens_that_were_emitted(llama_dir, method):
    """The draft is the target itself, so a whole draft is accepted. A stop token inside the
    first draft ends the request there: only the drafted tokens that came out count."""
    llm = LLM(llama_dir, dtype="fp32", draft=llama_dir)
    free = llm.generate(["def"], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0]
    ids = free.token_ids
    end = next(j for j in range(1, len(ids)) if ids[j] not in ids[:j])  # first new token
    assert end < 6, "the stop must fall inside the first 6-token draft"
    params = SamplingParams(
        max_tokens=10, temperature=0, ignore_eos=True, stop_token_ids=[ids[end]]
    )
    out = llm.generate(["def"], params, method=MethodConfig(method, gamma=6))[0]
    assert out.token_ids == ids[: end + 1]
    assert out.stats.draft_tokens == 6
    assert out.stats.accepted_tokens == end + 1
