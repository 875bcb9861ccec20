"""SamplingParams remembers what the caller left unset; `with_defaults` fills it from a model."""

import pytest

from braid import InvalidRequestError, SamplingParams
from braid.sampling import FALLBACKS

# a generation_config.json as models ship it (keys braid does not use are ignored)
MODEL = {
    "bos_token_id": 1,
    "do_sample": True,
    "temperature": 0.6,
    "top_p": 0.9,
    "top_k": 20,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "max_new_tokens": 200,
    "max_length": 4096,
}


def test_unset_fields_fall_back_to_braids_values():
    p = SamplingParams()
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.min_p) == (64, 1.0, 0, 1.0, 0.0)
    assert p.repetition_penalty == 1.0 and not p.penalised
    assert p.unset == set(FALLBACKS)
    # explicit values equal to the fallbacks are set, and compare equal all the same
    q = SamplingParams(temperature=1.0, max_tokens=64)
    assert q.unset == set(FALLBACKS) - {"temperature", "max_tokens"}
    assert q == p


def test_unset_fields_take_the_models_defaults():
    p = SamplingParams(seed=3).with_defaults(MODEL)
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (0.6, 0.9, 20, 0.05)
    assert p.repetition_penalty == 1.1 and p.max_tokens == 200 and p.seed == 3
    assert p.unset == set(FALLBACKS)  # still what the caller left open
    assert isinstance(p.top_k, int) and isinstance(p.max_tokens, int)


def test_explicit_values_always_win():
    p = SamplingParams(temperature=1.0, top_k=0, max_tokens=10, repetition_penalty=1.0)
    out = p.with_defaults(MODEL)
    assert (out.temperature, out.top_k, out.max_tokens, out.repetition_penalty) == (1.0, 0, 10, 1.0)
    assert (out.top_p, out.min_p) == (0.9, 0.05)  # the unset ones still take the model's
    assert SamplingParams(temperature=0.3).with_defaults({"do_sample": False}).temperature == 0.3


def test_do_sample_false_means_greedy_when_temperature_is_unset():
    out = SamplingParams().with_defaults({"do_sample": False, "temperature": 0.7, "top_k": 5})
    assert out.greedy and out.temperature == 0.0 and out.top_k == 5
    assert SamplingParams().with_defaults({"do_sample": True}).temperature == 1.0


@pytest.mark.parametrize("defaults", [{}, {"temperature": None, "top_p": None}])
def test_no_defaults_keeps_the_fallbacks(defaults):
    p = SamplingParams(top_p=0.5)
    out = p.with_defaults(defaults)
    assert out == p and out.unset == p.unset  # still unset: a later model may give them
    assert out.temperature == 1.0 and out.max_tokens == 64


def test_with_defaults_returns_a_copy():
    p = SamplingParams()
    p.with_defaults(MODEL)
    assert p.temperature == 1.0 and p.unset == set(FALLBACKS)


@pytest.mark.parametrize(
    "defaults,match",
    [
        ({"top_p": 0.0}, "top_p"),
        ({"temperature": -1.0}, "temperature"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"max_new_tokens": 0}, "max_tokens"),
    ],
)
def test_resolved_values_are_validated(defaults, match):
    with pytest.raises(InvalidRequestError, match=match):
        SamplingParams().with_defaults(defaults)


def test_positional_and_keyword_construction_still_work():
    p = SamplingParams(16, 0.5, 3, 0.9, 0.1)
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.min_p) == (16, 0.5, 3, 0.9, 0.1)
    assert p.unset == {"repetition_penalty"}


def test_a_models_default_max_tokens_is_cut_to_the_context_silently(recwarn):
    """multiverse-arith: context 512, generation_config max_new_tokens 512. Only a max_tokens
    the caller gave is worth a warning (and a 400 from the server)."""
    from braid import LLM
    from braid.errors import BraidWarning

    llm = LLM("multiverse-arith", dtype="fp32", max_batch=1)
    out = llm.generate(["A = 3 + 4\n"], SamplingParams(temperature=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 512 - len(out.prompt_token_ids)
    assert not [w for w in recwarn if issubclass(w.category, BraidWarning)]
    with pytest.warns(BraidWarning, match="maximum context length"):
        llm.generate(["A = 3 + 4\n"], SamplingParams(max_tokens=600, temperature=0))
