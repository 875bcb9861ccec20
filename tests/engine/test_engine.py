"""Batching, continuous batching, streaming and stats of the step loop."""

import torch
from helpers import hf_model

from braid import LLM, SamplingParams
from braid.engine.engine import Engine
from braid.engine.request import Detokenizer
from braid.methods import make_method

PROMPTS = ["The quick brown fox", "def", "Ünïcödé façade, naïve café; 東京", "x", "emoji 🙂🚀 live"]


def test_continuous_batching_gives_each_request_its_solo_greedy_output(llama_dir):
    """5 requests, 2 slots, different lengths: requests join as others leave mid-flight."""
    llm = LLM(llama_dir, dtype="fp32", max_batch=2)
    params = [
        SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (3, 17, 9, 25, 6)
    ]
    engine = Engine(llm.model, llm.tokenizer, make_method("ar"), max_batch=2)
    reqs = [engine.add_request(p, sp) for p, sp in zip(PROMPTS, params)]
    order, batch_sizes = [], []
    while engine.has_unfinished:
        stepped = engine.step()
        batch_sizes.append(len(stepped))
        order += [r.id for r in stepped if r.finished]
    assert max(batch_sizes) == 2 and order[0] == 0  # the shortest leaves first
    assert engine.pool.live_slots == 0
    ref = hf_model(llama_dir)
    for req, sp in zip(reqs, params):
        ids = torch.tensor([req.prompt_ids])
        expected = ref.generate(
            ids,
            max_new_tokens=sp.max_tokens,
            min_new_tokens=sp.max_tokens,
            do_sample=False,
            pad_token_id=0,
        )[0, ids.shape[1] :]
        assert req.output_ids == expected.tolist()
        assert req.stats.passes == sp.max_tokens


def test_stream_deltas_concatenate_to_the_generated_text(llama_dir):
    llm = LLM(llama_dir, dtype="fp32")
    params = SamplingParams(max_tokens=40, temperature=0.9, seed=3, ignore_eos=True)
    deltas = list(llm.stream("emoji 🙂", params))
    full = llm.generate(["emoji 🙂"], params)[0]
    assert "".join(deltas) == full.text
    # nothing streamed is ever revised: every partial concatenation is a prefix of the text
    # (a random model may emit invalid bytes, so U+FFFD itself can appear in the final text)
    for i in range(len(deltas)):
        assert full.text.startswith("".join(deltas[: i + 1]))
    assert llm.last_stream_output.token_ids == full.token_ids


def test_detokenizer_never_splits_a_multibyte_character(llama_dir):
    llm = LLM(llama_dir, dtype="fp32")
    text = "naïve 東京 🙂🚀 done"
    ids = llm.tokenizer.encode(text)
    # byte-level BPE splits the emoji across several tokens: check the premise of the test
    assert any("\ufffd" in llm.tokenizer.decode([i]) for i in ids)
    detok = Detokenizer(llm.tokenizer, [])
    deltas = [detok.push(i) for i in ids]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_stats_count_prompt_generated_and_passes(llama_dir):
    llm = LLM(llama_dir, dtype="fp32")
    out = llm.generate("The quick", SamplingParams(max_tokens=7, temperature=0, ignore_eos=True))[0]
    s = out.stats
    assert s.prompt_tokens == len(llm.tokenizer.encode("The quick"))
    assert s.generated_tokens == 7 == len(out.token_ids) and s.passes == 7
    assert s.seconds > 0 and s.tokens_per_s > 0 and s.tokens_per_pass == 1.0
    assert out.finish_reason == "length"


def test_generation_stops_at_the_context_length(tmp_path):
    from helpers import make_hf_model

    d = make_hf_model("llama", tmp_path / "short", max_position_embeddings=16)
    llm = LLM(d, dtype="fp32")
    out = llm.generate(
        [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]],
        SamplingParams(max_tokens=100, temperature=0, ignore_eos=True),
    )[0]
    assert len(out.token_ids) == 6 and out.finish_reason == "length"


def test_token_id_prompts_and_text_prompts_agree(llama_dir):
    llm = LLM(llama_dir, dtype="fp32")
    p = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    by_text = llm.generate("def main", p)[0]
    by_ids = llm.generate([llm.tokenizer.encode("def main")], p)[0]
    assert by_text.token_ids == by_ids.token_ids and by_text.text == by_ids.text
