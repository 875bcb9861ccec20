"""Drafts that borrow their target's embeddings, with a vocabulary shortlist: loading, refusal
of a target they do not fit, exact zeros outside the shortlist, and exactness of the methods."""

import json

import pytest
import torch
from helpers import make_hf_model, seeded_two_token_runs
from methods.test_speculative import exact_two_token_distribution

from braid import LLM, MethodConfig, ModelLoadError, SamplingParams
from braid.methods.draft import SHARED_KEY, SHIPPED_DRAFT, Drafter, ShortlistHead
from braid.model.registry import ASSETS, CODE_MODEL, bundled_model
from braid.training.train_draft import save_shared_draft

SHIPPED = ASSETS / SHIPPED_DRAFT


@pytest.fixture(scope="module")
def target_top(llama_dir):
    """The tiny target's four most likely first tokens after the test prompt."""
    from helpers import hf_model

    llm = LLM(llama_dir, dtype="fp32", threads=1)
    prompt = llm.tokenizer.encode("The quick brown")
    with torch.no_grad():
        logits = hf_model(llama_dir)(torch.tensor([prompt])).logits[0, -1]
    return prompt, logits.topk(4).indices.tolist()


@pytest.fixture(scope="module")
def shortlist_draft(llama_dir, target_top, tmp_path_factory):
    """One layer of the tiny target on its embeddings; the shortlist leaves out the target's
    second most likely first token and every id above 250."""
    _, top = target_top
    ids = [i for i in range(250) if i != top[1]]
    out = tmp_path_factory.mktemp("shared") / "draft"
    return save_shared_draft(llama_dir, out, [0], ids, "tiny"), ids


def test_the_draft_stores_no_embeddings_and_borrows_the_targets(llama_dir, shortlist_draft):
    from safetensors import safe_open

    path, ids = shortlist_draft
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "embed" in k or "lm_head" in k]
    llm = LLM(llama_dir, dtype="fp32", draft=path, threads=1)
    draft = llm.draft_model()
    assert draft.embed is llm.model.embed  # the same tensor, not a copy
    assert isinstance(draft.lm_head, ShortlistHead)
    assert draft.lm_head.ids.tolist() == ids


def test_probabilities_outside_the_shortlist_are_exactly_zero(llama_dir, shortlist_draft):
    path, ids = shortlist_draft
    llm = LLM(llama_dir, dtype="fp32", draft=path, threads=1)
    draft = llm.draft_model()
    hidden = torch.randn(5, draft.config.hidden_size)
    logits = draft.lm_head(hidden)
    vocab = llm.model.config.vocab_size
    assert logits.shape == (5, vocab)

    class Req:
        params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=2)

    probs = Drafter(draft).probs(logits, [Req()] * 5, vocab)
    outside = torch.ones(vocab, dtype=torch.bool)
    outside[ids] = False
    assert torch.all(probs[:, outside] == 0)
    assert torch.all(probs[:, ids] > 0)
    torch.testing.assert_close(probs.sum(1), torch.ones(5, dtype=probs.dtype))


@pytest.mark.parametrize("method", ["spec", "block"])
def test_sampling_with_a_shortlist_draft_matches_the_target(
    llama_dir, target_top, shortlist_draft, method
):
    """800 seeded runs; total variation to the exact joint of the first two tokens < 0.12
    (sampling noise alone: about 0.05 with 16 outcomes).

    The target's second most likely first token is outside the draft's shortlist, so it comes
    only from the residual: a rule that dropped or misplaced it would be far off."""
    prompt, top = target_top
    path, _ = shortlist_draft
    llm = LLM(llama_dir, dtype="fp32", draft=path, max_batch=8, threads=1)
    exact = exact_two_token_distribution(llama_dir, prompt, top_k=4)
    n = 800
    outs, counts, tv = seeded_two_token_runs(llm, prompt, exact, MethodConfig(method, gamma=3), n)
    assert tv < 0.12, tv
    assert sum(o.stats.draft_tokens for o in outs) > 0
    firsts = sum(c for k, c in counts.items() if k[0] == top[1]) / n
    assert firsts > 0.02  # the token the draft can never propose still appears


def test_a_draft_for_another_tokenizer_is_refused(llama_dir, shortlist_draft, tmp_path):
    path, _ = shortlist_draft
    other = make_hf_model("llama", tmp_path / "other", seed=4)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ModelLoadError, match="tokenizer of tiny"):
        LLM(other, dtype="fp32", draft=path, threads=1).draft_model()


def test_a_shared_embedding_draft_is_not_a_model(shortlist_draft):
    path, _ = shortlist_draft
    with pytest.raises(ModelLoadError, match="borrows its target's embeddings; load it as a draft"):
        LLM(path, dtype="fp32", threads=1)


# -- the shipped draft of the default model ---------------------------------------------------


def test_the_shipped_draft_is_small_and_stores_no_embeddings():
    cfg = json.loads((SHIPPED / "config.json").read_text())
    assert cfg[SHARED_KEY]["vocab_size"] == 49152 and cfg[SHARED_KEY]["hidden_size"] == 576
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) < 20e6


def test_the_shipped_draft_refuses_the_bundled_code_model():
    llm = LLM(bundled_model(CODE_MODEL), dtype="fp32", draft=SHIPPED, threads=1)
    with pytest.raises(ModelLoadError, match="borrows the embeddings of SmolLM2-135M-Instruct"):
        llm.draft_model()


@pytest.fixture(scope="module")
def default_llm():
    return LLM(dtype="fp32", max_batch=2, threads=1)


def test_the_shipped_draft_loads_by_default_for_the_default_model(default_llm):
    draft = default_llm.draft_model()
    assert isinstance(draft.lm_head, ShortlistHead)
    assert draft.embed is default_llm.model.embed
    assert draft.config.num_layers < default_llm.model.config.num_layers


def test_greedy_spec_with_the_shipped_draft_is_ar_token_for_token(default_llm):
    chats = [
        [{"role": "user", "content": "Write a haiku about a lighthouse."}],
        [{"role": "user", "content": "What is 17 times 3? Explain briefly."}],
    ]
    params = SamplingParams(max_tokens=32, temperature=0)
    ar = default_llm.chat(chats, params)
    spec = default_llm.chat(chats, params, method=MethodConfig("spec", gamma=4))
    for a, s in zip(ar, spec):
        assert s.token_ids == a.token_ids
    assert sum(s.stats.accepted_tokens for s in spec) > 0  # the draft really drafted
