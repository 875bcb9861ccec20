"""After rejections both caches stay consistent: continuing from them equals a fresh run.

After every engine step of a draft-model method, for every request still running, the target's
and the draft's token graphs are continued with the rest of the accepted sequence; the logits
must equal `transformers`' logits over the whole sequence computed from scratch.
"""

import pytest
import torch
from helpers import hf_model, noisy_copy

from braid import LLM, MethodConfig, SamplingParams
from braid.model.batch import Append, build_batch


@pytest.fixture(scope="module")
def noisy_draft(llama_dir, tmp_path_factory):
    return noisy_copy(llama_dir, tmp_path_factory.mktemp("noisy") / "draft", 0.035, seed=9)


def continue_equals_fresh(model, graph, ids: list[int], ref) -> None:
    """Feed ids[graph.length:] on top of the cache, compare, and roll the probe back."""
    n = graph.length
    assert graph.is_linear and torch.equal(graph.pos[:n], torch.arange(n))
    assert 0 < n < len(ids)
    new = ids[n:]
    logits, _ = model.forward(build_batch([Append(graph, new, range(n, len(ids)))], model.windows))
    graph.truncate(n)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0, n:]
    assert (logits - want).abs().max() < 1e-4 * want.abs().max()


@pytest.mark.parametrize("method", ["spec", "block", "mtad", "mtad-tree"])
def test_caches_after_rejections_equal_a_fresh_run_of_the_accepted_prefix(
    llama_dir, noisy_draft, method
):
    llm = LLM(llama_dir, dtype="fp32", draft=noisy_draft, max_batch=2)
    engine = llm._engine(MethodConfig(method, gamma=3, beams=3))
    target_ref, draft_ref = hf_model(llama_dir), hf_model(noisy_draft)
    prompts = [llm.tokenizer.encode(t) for t in ("The quick brown fox", "def f(x):", "emoji")]
    reqs = [
        engine.add_request(p, SamplingParams(max_tokens=n, seed=s, ignore_eos=True))
        for s, (p, n) in enumerate(zip(prompts, (30, 12, 24)))
    ]
    drafter = engine.method.drafter
    checked = 0
    while engine.has_unfinished:
        engine.step()
        for r in engine.running:
            continue_equals_fresh(engine.model, r.graph, r.all_ids, target_ref)
            continue_equals_fresh(drafter.model, drafter.graphs[r.id], r.all_ids, draft_ref)
            checked += 1
    proposed = sum(r.stats.draft_tokens for r in reqs)
    accepted = sum(r.stats.accepted_tokens for r in reqs)
    assert 0 < accepted < proposed and checked > 10  # rejections happened and were checked
    assert [len(r.output_ids) for r in reqs] == [30, 12, 24]


@pytest.mark.parametrize("method", ["ngram", "ngram-block"])
def test_prompt_lookup_cache_after_rejections_equals_a_fresh_run(llama_dir, method):
    """Greedy requests of the tiny model loop (copies are kept), sampled ones mostly reject."""
    llm = LLM(llama_dir, dtype="fp32", max_batch=2)
    engine = llm._engine(MethodConfig(method, gamma=4))
    target_ref = hf_model(llama_dir)
    texts = ("The quick brown fox The quick", "def f(x): def", "emoji emoji")
    reqs = [
        engine.add_request(
            llm.tokenizer.encode(t), SamplingParams(max_tokens=n, seed=s, temperature=temp)
        )
        for s, (t, n, temp) in enumerate(zip(texts, (30, 12, 24), (0.0, 1.0, 0.0)))
    ]
    checked = 0
    while engine.has_unfinished:
        engine.step()
        for r in engine.running:
            continue_equals_fresh(engine.model, r.graph, r.all_ids, target_ref)
            checked += 1
    proposed = sum(r.stats.draft_tokens for r in reqs)
    accepted = sum(r.stats.accepted_tokens for r in reqs)
    assert 0 < accepted < proposed and checked > 5
