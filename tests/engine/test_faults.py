"""A request that fails or is aborted leaves the engine and its peers as if it had never been."""

import pytest
import torch
from helpers import hf_model

from braid import LLM, SamplingParams
from braid.engine.engine import Engine
from braid.methods import MethodConfig, make_method

PROMPTS = ["The quick brown fox", "def", "Ünïcödé façade", "x", "emoji 🙂🚀 live"]
LENGTHS = (7, 12, 9, 15, 6)


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, **kw)


def hf_greedy(ref, ids: list[int], n: int) -> list[int]:
    """transformers' own greedy continuation: the reference every survivor must match."""
    x = torch.tensor([ids])
    out = ref.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, x.shape[1] :].tolist()


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, dtype="fp32", max_batch=3, draft=llama_dir)


@pytest.fixture(scope="module")
def ref(llama_dir):
    return hf_model(llama_dir)


def engine_for(llm, method: str) -> Engine:
    draft = llm.draft_model() if method == "spec" else None
    return Engine(llm.model, llm.tokenizer, make_method(MethodConfig(method), draft=draft), 3)


def check_survivors(engine, reqs, bad, ref):
    for i, req in enumerate(reqs):
        if i in bad:
            continue
        assert req.error is None and req.finish_reason == "length"
        assert req.output_ids == hf_greedy(ref, req.prompt_ids, LENGTHS[i]), PROMPTS[i]
    assert engine.pool.live_slots == 0 and not engine.running and not engine.waiting


def test_a_raising_logits_processor_fails_its_request_alone(llm, ref):
    calls = []

    def broken(ids, logits):
        calls.append(len(ids))
        if len(ids) == 3:  # mid-decode, batched with the others
            raise RuntimeError("processor exploded")
        return logits

    engine = engine_for(llm, "ar")
    reqs = [
        engine.add_request(p, greedy(n, logits_processors=[broken] if i == 1 else ()))
        for i, (p, n) in enumerate(zip(PROMPTS, LENGTHS))
    ]
    while engine.has_unfinished:
        engine.step()
    bad = reqs[1]
    assert bad.finish_reason == "error" and "exploded" in str(bad.error)
    assert len(bad.output_ids) == 3  # what it had before the failing step
    check_survivors(engine, reqs, {1}, ref)
    # the engine goes on serving
    again = engine.add_request(PROMPTS[0], greedy(5))
    list(engine.run())
    assert again.output_ids == hf_greedy(ref, again.prompt_ids, 5)


def test_a_processor_returning_a_wrong_shape_is_named(llm):
    engine = engine_for(llm, "ar")
    req = engine.add_request("def", greedy(4, logits_processors=[lambda ids, x: x[:5]]))
    peer = engine.add_request("x", greedy(4))
    list(engine.run())
    assert req.finish_reason == "error" and "shape" in str(req.error)
    assert peer.finish_reason == "length" and engine.pool.live_slots == 0


@pytest.mark.parametrize("method", ["ar", "spec"])
def test_a_failing_step_is_undone_and_only_the_culprit_fails(llm, ref, method, monkeypatch):
    """A fault inside the target pass (not a processor): the whole batch is rolled back, the
    peers step again alone and get exactly their solo greedy outputs, drafts included."""
    engine = engine_for(llm, method)
    reqs = [engine.add_request(p, greedy(n)) for p, n in zip(PROMPTS, LENGTHS)]
    poisoned = reqs[2]
    forward = engine.forward
    failures = []

    def flaky(appends, *args, **kw):
        # fails whenever the poisoned request is in the pass, after its rows were reserved
        out = forward(appends, *args, **kw)
        if poisoned.graph is not None and any(a.graph is poisoned.graph for a in appends):
            if len(poisoned.output_ids) >= 2:
                failures.append(len(appends))
                raise RuntimeError("kernel fault")
        return out

    monkeypatch.setattr(engine, "forward", flaky)
    while engine.has_unfinished:
        engine.step()
    assert failures[0] > 1  # it failed inside a batch with peers
    assert poisoned.finish_reason == "error" and "kernel fault" in str(poisoned.error)
    check_survivors(engine, reqs, {2}, ref)
    drafter = getattr(engine.method, "drafter", None)
    if drafter is not None:
        assert drafter.pool.live_slots == 0 and not drafter.graphs


@pytest.mark.parametrize("method", ["ar", "spec"])
def test_abort_frees_the_slot_and_the_draft_within_the_step(llm, ref, method):
    engine = engine_for(llm, method)
    reqs = [engine.add_request(p, greedy(n)) for p, n in zip(PROMPTS, LENGTHS)]
    engine.step()
    running, waiting = reqs[0], reqs[4]
    assert running in engine.running and waiting in engine.waiting
    made = len(running.output_ids)
    engine.abort(running)
    engine.abort(waiting)
    assert engine.pool.live_slots == 2 and running not in engine.running
    drafter = getattr(engine.method, "drafter", None)
    if drafter is not None:
        assert running.id not in drafter.graphs and drafter.pool.live_slots == 2
    assert running.finish_reason == waiting.finish_reason == "abort"
    while engine.has_unfinished:
        engine.step()
    assert len(running.output_ids) == made and waiting.output_ids == []
    check_survivors(engine, reqs, {0, 4}, ref)


def test_abort_ends_every_sample_of_the_prompt(llm):
    engine = engine_for(llm, "ar")
    req = engine.add_request("def", SamplingParams(max_tokens=20, temperature=1, n=4, seed=1))
    engine.step()
    engine.abort(req)
    assert [s.finish_reason for s in req.samples] == ["abort"] * 4
    assert not engine.has_unfinished and engine.pool.live_slots == 0


def test_stream_raises_the_error_of_its_failed_request(llm):
    def broken(ids, logits):
        if len(ids) == 2:
            raise RuntimeError("processor exploded")
        return logits

    deltas = []
    with pytest.raises(RuntimeError, match="exploded"):
        for d in llm.stream("def", greedy(8, logits_processors=[broken])):
            deltas.append(d)
    assert llm.last_stream_output.finish_reason == "error"
