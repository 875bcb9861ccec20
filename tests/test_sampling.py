"""Sampling: processed distributions against a direct per-token computation, seeds, stops."""

import math

import pytest
import torch

from braid import LLM, InvalidRequestError, SamplingParams
from braid.sampling import process_logits, sample


def reference_probs(logits: list[float], t: float, k: int, p: float, min_p: float) -> list[float]:
    """The definition, token by token, in plain Python (transformers' warper order)."""
    scores = [x / t for x in logits]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    allowed = set(order[:k]) if k > 0 else set(order)

    def softmax(idx):
        m = max(scores[i] for i in idx)
        z = sum(math.exp(scores[i] - m) for i in idx)
        return {i: math.exp(scores[i] - m) / z for i in idx}

    probs = softmax(allowed)
    if p < 1:
        kept, mass = set(), 0.0
        for i in order:
            if i in allowed and mass < p:
                kept.add(i)
                mass += probs[i]
        allowed = kept
    if min_p > 0:
        top = max(probs[i] for i in allowed)
        allowed = {i for i in allowed if probs[i] >= min_p * top} | {order[0]}
    final = softmax(allowed)
    return [final.get(i, 0.0) for i in range(len(scores))]


@pytest.mark.parametrize(
    "t,k,p,min_p",
    [
        (1.0, 0, 1.0, 0.0),
        (0.7, 5, 1.0, 0.0),
        (1.3, 0, 0.8, 0.0),
        (1.0, 0, 1.0, 0.1),
        (0.9, 7, 0.9, 0.05),
        (2.0, 1, 1.0, 0.0),
        (1.0, 0, 0.05, 0.0),
    ],
)
def test_processed_distribution_matches_the_definition(t, k, p, min_p):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 40, generator=gen) * 2
    params = SamplingParams(temperature=t, top_k=k, top_p=p, min_p=min_p)
    ours = process_logits(logits, [params] * 4)
    for row in range(4):
        ref = reference_probs(logits[row].tolist(), t, k, p, min_p)
        assert torch.allclose(ours[row], torch.tensor(ref), atol=1e-6)


@pytest.mark.parametrize(
    "temps",
    [(0.5, 1.0, 1.7, 1.0), (1.0, 0.0, 0.8, 1.0)],  # mixed plain rows; a greedy row too
)
def test_each_row_is_processed_with_its_own_parameters(temps):
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 40, generator=gen) * 2
    ours = process_logits(logits, [SamplingParams(temperature=t) for t in temps])
    for row, t in enumerate(temps):
        if t == 0:
            assert ours[row].tolist() == [float(i == int(logits[row].argmax())) for i in range(40)]
            continue
        ref = reference_probs(logits[row].tolist(), t, 0, 1.0, 0.0)
        assert torch.allclose(ours[row], torch.tensor(ref), atol=1e-6)


def test_greedy_distribution_is_one_hot_on_the_argmax():
    logits = torch.tensor([[0.1, 3.0, 3.0, -1.0]])
    probs = process_logits(logits, [SamplingParams(temperature=0)])
    assert probs.tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_the_exponential_race_follows_the_distribution():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([sample(probs, g) for _ in range(20000)]), minlength=4)
    assert counts[1] == 0  # a zero-probability token is never drawn
    # 5 sigma of a binomial with n = 20000
    for i, q in enumerate(probs.tolist()):
        assert abs(counts[i] / 20000 - q) < 5 * math.sqrt(q * (1 - q) / 20000) + 1e-9


def test_same_seed_same_tokens_alone_and_inside_a_batch(llama_dir):
    llm = LLM(llama_dir, dtype="fp32", max_batch=4)
    params = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.95, seed=1234, ignore_eos=True)
    alone = llm.generate(["The quick"], params)[0].token_ids
    again = llm.generate(["The quick"], params)[0].token_ids
    others = [SamplingParams(max_tokens=n, temperature=1.0, ignore_eos=True) for n in (5, 30, 12)]
    batch = llm.generate(
        ["café", "The quick", "def main", "emoji"], [others[0], params, others[1], others[2]]
    )
    assert alone == again == batch[1].token_ids
    other_seed = llm.generate(
        ["The quick"], SamplingParams(max_tokens=24, seed=99, ignore_eos=True)
    )
    assert other_seed[0].token_ids != alone


def test_stop_strings_trim_the_text(llama_dir):
    llm = LLM(llama_dir, dtype="fp32")
    free = llm.generate(["fox"], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))[0]
    text = free.text
    assert len(text) > 6
    stop = text[3:6]
    cut = llm.generate(
        ["fox"], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=[stop])
    )[0]
    assert cut.finish_reason == "stop"
    assert cut.text == text[: text.find(stop)]
    assert stop not in cut.text
    # the token that completed the stop string is the last one generated
    assert cut.token_ids == free.token_ids[: len(cut.token_ids)]


def test_stop_token_ids_and_eos(llama_dir):
    llm = LLM(llama_dir, dtype="fp32")
    free = llm.generate(["fox"], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))[0]
    target = free.token_ids[5]
    out = llm.generate(
        ["fox"], SamplingParams(max_tokens=30, temperature=0, stop_token_ids=[target])
    )[0]
    assert out.token_ids == free.token_ids[: free.token_ids.index(target) + 1]
    assert out.finish_reason == "stop"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_parameters_raise_a_clear_error(kwargs, match):
    with pytest.raises(InvalidRequestError, match=match):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "bad",
    [
        dict(presence_penalty=None),
        dict(temperature="1"),
        dict(top_k=2.5),
        dict(max_tokens=2.5),
        dict(n=True),
        dict(stop_token_ids=["<|im_end|>"]),
    ],
)
def test_wrong_types_are_clear_errors(bad):
    from braid import InvalidRequestError, SamplingParams

    with pytest.raises(InvalidRequestError, match=next(iter(bad))):
        SamplingParams(**bad)
