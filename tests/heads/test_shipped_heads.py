"""The CP heads shipped for the default model (SmolLM2-135M-Instruct): loaded by default for it,
refused by a model they do not fit, and exact (greedy output is `ar`'s in fp32)."""

from __future__ import annotations

import json

import pytest

from braid import LLM, SamplingParams
from braid.errors import ModelLoadError
from braid.model.registry import CODE_MODEL, SHIPPED_HEADS, bundled_model

pytestmark = pytest.mark.skipif(
    not (SHIPPED_HEADS / "heads.json").exists(), reason="no shipped SmolLM2 heads"
)
CHATS = [
    [{"role": "user", "content": "Write a haiku about a lighthouse."}],
    [{"role": "user", "content": "List three uses of a paperclip."}],
]


@pytest.fixture(scope="module")
def default_llm():
    return LLM(dtype="fp32", max_batch=2, threads=1)


def test_the_shipped_heads_record_the_default_models_vocabulary():
    spec = json.loads((SHIPPED_HEADS / "heads.json").read_text())
    assert (spec["hidden_size"], spec["vocab_size"]) == (576, 49152)
    assert len(spec["base_model"]["vocabulary_sha256"]) == 64
    assert sum(f.stat().st_size for f in SHIPPED_HEADS.iterdir()) < 20e6


@pytest.mark.parametrize("method", ["heads", "heads-tree"])
def test_greedy_heads_on_the_default_model_are_ar_token_for_token(default_llm, method):
    params = SamplingParams(max_tokens=32, temperature=0)
    ar = default_llm.chat(CHATS, params)
    heads = default_llm.chat(CHATS, params, method=method)
    for a, h in zip(ar, heads):
        assert h.token_ids == a.token_ids
    assert sum(h.stats.accepted_tokens for h in heads) > 0  # the shipped heads really drafted


def test_a_model_the_heads_do_not_fit_gets_no_default_and_refuses_them():
    llm = LLM(bundled_model(CODE_MODEL), dtype="fp32", threads=1)
    assert llm._shipped_heads() is None  # another vocabulary: not its default
    with pytest.raises(ModelLoadError):
        LLM(bundled_model(CODE_MODEL), dtype="fp32", threads=1, heads=SHIPPED_HEADS)
