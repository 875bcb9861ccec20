"""`SamplingParams.n`: several samples of one prompt, checked against independent references."""

import pytest
import torch
from helpers import hf_model

from braid import LLM, InvalidRequestError, MethodConfig, SamplingParams
from braid.llm import bundled_model
from braid.methods import METHODS

PROMPTS = ["The quick brown fox", "def", "Ünïcödé façade, naïve café; 東京"]


def test_greedy_samples_all_equal_transformers_greedy_output(llama_dir):
    llm = LLM(llama_dir, dtype="fp32", max_batch=4)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, n=3)
    outs = llm.generate(PROMPTS, params)
    ref = hf_model(llama_dir)
    for out in outs:
        ids = torch.tensor([out.prompt_token_ids])
        want = ref.generate(
            ids, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0
        )
        assert [o.index for o in out.outputs] == [0, 1, 2]
        for sample in out.outputs:
            assert sample.token_ids == want[0, ids.shape[1] :].tolist()
            assert sample.finish_reason == "length" and sample.text == out.outputs[0].text
        # sample 0 is what n = 1 reads; the others took the prompt's rows from a sibling
        assert (out.text, out.token_ids, out.stats) == (
            out.outputs[0].text,
            out.outputs[0].token_ids,
            out.outputs[0].stats,
        )
        shared = len(out.prompt_token_ids) - 1
        assert [o.stats.cached_prompt_tokens for o in out.outputs] == [0, shared, shared]


@pytest.mark.parametrize("max_batch,max_tokens", [(4, 8), (2, 8), (1, 3), (8, 1)])
def test_seeded_sample_i_is_the_single_request_with_seed_plus_i(llama_dir, max_batch, max_tokens):
    """Also when samples wait for slots, inherit a finished sibling's slot (max_tokens 1, a
    batch of 1) or run beside other prompts' requests."""
    llm = LLM(llama_dir, dtype="fp32", max_batch=max_batch)
    n = 5
    params = SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=11, ignore_eos=True, n=n)
    outs = llm.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outs):
        singles = llm.generate(
            [prompt] * n,
            [SamplingParams(max_tokens=max_tokens, seed=11 + i, ignore_eos=True) for i in range(n)],
        )
        assert [o.token_ids for o in out.outputs] == [s.token_ids for s in singles]
        assert len({tuple(o.token_ids) for o in out.outputs}) > 1  # different draws
        shared = len(out.prompt_token_ids) - 1
        assert [o.stats.cached_prompt_tokens for o in out.outputs] == [0] + [shared] * (n - 1)
    again = llm.generate(PROMPTS, params)
    assert [[o.token_ids for o in a.outputs] for a in again] == [
        [o.token_ids for o in a.outputs] for a in outs
    ]


def test_first_tokens_of_many_samples_follow_the_bundled_targets_distribution():
    """1200 samples of one prompt at temperature 1 against softmax of transformers' logits.

    Bins: the 8 likeliest tokens and the rest (mass 0.32). The sampling noise alone gives a TV
    of about 0.03; samples that repeated one draw, or followed another distribution, give far
    more than the 0.075 allowed.
    """
    import transformers as tf

    path = bundled_model("code-23m")
    prompt = "import os\n\n\ndef main():\n"
    ref = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = LLM(path, dtype="fp32", max_batch=8)
    ids = llm.tokenizer.encode(prompt)
    with torch.no_grad():
        p = torch.softmax(ref(torch.tensor([ids])).logits[0, -1].double(), -1)
    top = p.topk(8).indices.tolist()
    n = 1200
    params = SamplingParams(max_tokens=1, temperature=1.0, top_p=1.0, seed=0, ignore_eos=True, n=n)
    out = llm.generate(prompt, params)[0]
    firsts = [o.token_ids[0] for o in out.outputs]
    freq = [sum(t == b for t in firsts) / n for b in top]
    exact = p[top].tolist()
    tv = 0.5 * (sum(abs(f - e) for f, e in zip(freq, exact)) + abs(sum(exact) - sum(freq)))
    assert tv < 0.075, (tv, freq, exact)
    assert sum(o.stats.cached_prompt_tokens for o in out.outputs) == (n - 1) * (len(ids) - 1)


@pytest.fixture(scope="module")
def bundled_llms():
    """The bundled code model (its draft and heads ship too) and the Multiverse model."""
    return {
        "code": LLM(bundled_model("code-23m"), dtype="fp32", max_batch=4),
        "multiverse": LLM(bundled_model("multiverse-arith"), dtype="fp32", max_batch=4),
    }


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_method_runs_n_samples_as_seeded_single_requests(bundled_llms, method, temperature):
    llm = bundled_llms["multiverse" if method == "multiverse" else "code"]
    config = MethodConfig(method, gamma=3)
    prompts = ["def add(a, b):\n", "import os\n"]
    n = 3
    params = SamplingParams(max_tokens=8, temperature=temperature, seed=5, n=n)
    outs = llm.generate(prompts, params, method=config)
    for prompt, out in zip(prompts, outs):
        singles = llm.generate(
            [prompt] * n,
            [SamplingParams(max_tokens=8, temperature=temperature, seed=5 + i) for i in range(n)],
            method=config,
        )
        assert [o.text for o in out.outputs] == [s.text for s in singles]
        assert [o.token_ids for o in out.outputs] == [s.token_ids for s in singles]


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_bad_n_is_refused(n):
    with pytest.raises(InvalidRequestError, match="n "):
        SamplingParams(n=n)


def test_stream_refuses_several_samples(llama_dir):
    llm = LLM(llama_dir, dtype="fp32")
    with pytest.raises(InvalidRequestError, match="one sample"):
        next(llm.stream("x", SamplingParams(n=2)))
