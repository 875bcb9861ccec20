"""Penalties: `apply_penalties` against transformers and the OpenAI definition, validation."""

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from braid import InvalidRequestError, SamplingParams
from braid.sampling import apply_penalties

V = 50


def openai_penalties(logits: list[float], output: list[int], presence: float, frequency: float):
    """OpenAI's definition, token by token: mu[j] -= c[j] * frequency + (c[j] > 0) * presence."""
    out = list(logits)
    for j in range(len(out)):
        c = output.count(j)
        out[j] -= c * frequency + float(c > 0) * presence
    return out


def histories(seed: int, rows: int):
    """Random (prompt, output) pairs with repeats, some rows sharing one prompt list."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randint(0, V, (12,), generator=gen).tolist()
    out = []
    for i in range(rows):
        prompt = shared if i % 2 else torch.randint(0, V, (7,), generator=gen).tolist()
        out.append((prompt, torch.randint(0, V // 3, (i * 3,), generator=gen).tolist()))
    return out


@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, V, generator=gen) * 3
    hist = histories(1, 5)
    ours = apply_penalties(logits, [SamplingParams(repetition_penalty=penalty)] * 5, hist)
    proc = RepetitionPenaltyLogitsProcessor(penalty)
    for row, (prompt, output) in enumerate(hist):
        ref = proc(torch.tensor([prompt + output]), logits[row : row + 1].clone())[0]
        torch.testing.assert_close(ours[row], ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("presence,frequency", [(0.5, 0.0), (0.0, 0.7), (1.2, -0.4), (-2, 2)])
def test_presence_and_frequency_match_the_openai_definition(presence, frequency):
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(6, V, generator=gen) * 3
    hist = histories(3, 6)
    params = SamplingParams(presence_penalty=presence, frequency_penalty=frequency)
    ours = apply_penalties(logits, [params] * 6, hist)
    for row, (_, output) in enumerate(hist):  # the prompt does not count
        ref = openai_penalties(logits[row].tolist(), output, presence, frequency)
        torch.testing.assert_close(ours[row], torch.tensor(ref), atol=1e-5, rtol=0)


def test_all_penalties_together_and_rows_without_any_are_untouched():
    """Repetition first (transformers), then frequency and presence (OpenAI), as vLLM orders
    them; each row with its own params; a row without penalties comes back as it was."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(4, V, generator=gen) * 3
    hist = histories(5, 4)
    params = [
        SamplingParams(repetition_penalty=1.5, presence_penalty=0.3, frequency_penalty=0.2),
        SamplingParams(),
        SamplingParams(presence_penalty=-0.5),
        SamplingParams(repetition_penalty=0.8, frequency_penalty=1.0, temperature=0),
    ]
    ours = apply_penalties(logits, params, hist)
    for row, (p, (prompt, output)) in enumerate(zip(params, hist)):
        ref = logits[row : row + 1].clone()
        if p.repetition_penalty != 1:
            ref = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(
                torch.tensor([prompt + output]), ref
            )
        ref = openai_penalties(ref[0].tolist(), output, p.presence_penalty, p.frequency_penalty)
        torch.testing.assert_close(ours[row], torch.tensor(ref), atol=1e-5, rtol=0)
    assert torch.equal(ours[1], logits[1])


def test_no_penalties_costs_nothing():
    logits = torch.randn(3, V)
    assert apply_penalties(logits, [SamplingParams()] * 3, [([1], [2])] * 3) is logits


def test_ids_past_the_vocabulary_are_skipped():
    """A draft with a smaller vocabulary scores rows whose history holds ids it lacks."""
    logits = torch.zeros(1, 4)
    out = apply_penalties(logits, [SamplingParams(presence_penalty=1.0)], [([9], [1, 7])])
    assert out.tolist() == [[0.0, -1.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.01}, "frequency_penalty"),
    ],
)
def test_bad_penalties_raise_a_clear_error(kwargs, match):
    with pytest.raises(InvalidRequestError, match=match):
        SamplingParams(**kwargs)
