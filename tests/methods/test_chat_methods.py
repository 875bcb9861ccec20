"""Every method under chat: a conversation rendered by a template, stopped at its end-of-turn
token, gives `ar`'s greedy answer with the exact methods (fp32) and with MTAD (greedy = ar)."""

from __future__ import annotations

import pytest

from braid import LLM, MethodConfig, SamplingParams
from braid.llm import end_of_turn_ids
from braid.model.registry import BUNDLED_HEADS, bundled_model

TEMPLATE = (
    "{% for m in messages %}# {{ m['role'] }}: {{ m['content'] }}\n{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}# assistant:\n{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "You write Python."},
    {"role": "user", "content": "import os\n\ndef main():"},
]


@pytest.fixture(scope="module")
def code_llm():
    return LLM("code-23m", dtype="fp32", draft=bundled_model("code-draft-2m"), heads=BUNDLED_HEADS)


@pytest.mark.parametrize(
    "method", ["spec", "block", "mtad", "mtad-tree", "heads", "heads-block", "heads-tree"]
)
def test_every_method_answers_a_chat_as_ar_does(code_llm, method):
    params = SamplingParams(max_tokens=24, temperature=0)
    ar = code_llm.chat(CONVERSATION, params, chat_template=TEMPLATE)[0]
    out = code_llm.chat(CONVERSATION, params, method=MethodConfig(method), chat_template=TEMPLATE)[
        0
    ]
    assert out.token_ids == ar.token_ids and out.text == ar.text
    assert out.stats.passes < len(out.token_ids)  # drafts were kept: the method really ran


def test_the_template_end_of_turn_stops_generation(code_llm):
    """Free generation runs past <|endoftext|> (ignore_eos); under chat it ends right there."""
    from braid.chat import ChatTemplate

    eos = code_llm.tokenizer.token_id("<|endoftext|>")
    template = ChatTemplate(TEMPLATE, **code_llm.tokenizer.special_token_texts())
    assert end_of_turn_ids(template, code_llm.tokenizer) == (eos,)
    ids = code_llm.chat_prompt(CONVERSATION, chat_template=TEMPLATE)
    # a seeded sample that writes the end-of-turn token when let run on: the search starts
    # near the first such seed found today (43), so it takes seconds, not 80 s of sampling
    for seed in range(40, 140):
        free = SamplingParams(max_tokens=120, temperature=1.5, seed=seed, ignore_eos=True)
        tokens = code_llm.generate([ids], free)[0].token_ids
        if eos in tokens:
            break
    assert eos in tokens, "no seed of 100 wrote the end-of-turn token"
    out = code_llm.chat(CONVERSATION, free, chat_template=TEMPLATE)[0]
    assert out.token_ids == tokens[: tokens.index(eos) + 1] and out.finish_reason == "stop"
