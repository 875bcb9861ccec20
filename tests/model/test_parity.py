"""braid's transformer against transformers' own modeling code on the same weights."""

import pytest
import torch
from helpers import ARCHS, braid_prefill, hf_model

from braid import LLM, SamplingParams
from braid.model import load_model
from braid.model.batch import Append, build_batch

PROMPTS = [[5, 7, 9, 11, 13, 2, 3, 200, 17], [1, 2, 3], [100, 200, 50, 60, 70, 8]]


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max())


@pytest.mark.parametrize("arch", ARCHS)
def test_ragged_batch_and_incremental_logits_match_transformers(arch, model_dirs):
    ref = hf_model(model_dirs[arch])
    model, _ = load_model(model_dirs[arch], "fp32")
    graphs, rows = braid_prefill(model, PROMPTS)
    with torch.no_grad():
        for p, ours in zip(PROMPTS, rows):
            assert rel_err(ours, ref(torch.tensor([p])).logits[0]) < 1e-4
        # three incremental steps with the cache, all requests at different lengths
        seqs = [list(p) for p in PROMPTS]
        for step in range(3):
            new = [[(31 * step + 7 * i) % 300] for i in range(len(seqs))]
            batch = build_batch(
                [Append(g, t, [g.length]) for g, t in zip(graphs, new)], model.windows
            )
            logits, _ = model.forward(batch)
            for i, s in enumerate(seqs):
                s += new[i]
                assert rel_err(logits[i], ref(torch.tensor([s])).logits[0, -1]) < 1e-4


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_bf16_logits_close_to_transformers(arch, model_dirs):
    """bf16 rounds differently per kernel; the stated tolerance is 3% of the logit scale."""
    ref = hf_model(model_dirs[arch], dtype=torch.bfloat16)
    model, _ = load_model(model_dirs[arch], "bf16")
    _, rows = braid_prefill(model, PROMPTS)
    with torch.no_grad():
        for p, ours in zip(PROMPTS, rows):
            assert rel_err(ours, ref(torch.tensor([p])).logits[0]) < 3e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_64_greedy_tokens_identical_to_transformers_generate(arch, model_dirs):
    ref = hf_model(model_dirs[arch])
    llm = LLM(model_dirs[arch], dtype="fp32", max_batch=2)
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=64, temperature=0, ignore_eos=True))
    for p, out in zip(PROMPTS, outs):
        expected = ref.generate(
            torch.tensor([p]),
            max_new_tokens=64,
            min_new_tokens=64,
            do_sample=False,
            pad_token_id=0,
        )[0, len(p) :].tolist()
        assert out.token_ids == expected
        assert out.stats.generated_tokens == 64 and out.stats.passes == 64


def test_hidden_states_are_the_final_normed_states(llama_dir):
    ref = hf_model(llama_dir)
    model, _ = load_model(llama_dir, "fp32")
    pool = model.new_pool(1)
    batch = build_batch([Append(pool.new_graph(), PROMPTS[0], range(len(PROMPTS[0])))])
    _, hidden = model.forward(batch, return_hidden=True)
    with torch.no_grad():
        expected = ref(torch.tensor([PROMPTS[0]]), output_hidden_states=True).hidden_states[-1][0]
    assert rel_err(hidden, expected) < 1e-4


def test_sliding_window_matches_transformers(tmp_path):
    from helpers import make_hf_model

    d = make_hf_model("mistral", tmp_path / "m", sliding_window=4)
    ref = hf_model(d)
    model, _ = load_model(d, "fp32")
    assert model.windows == (4, 4)
    _, rows = braid_prefill(model, PROMPTS[:1])
    with torch.no_grad():
        assert rel_err(rows[0], ref(torch.tensor([PROMPTS[0]])).logits[0]) < 1e-4


def test_fp16_runs_and_stays_close_to_fp32(llama_dir):
    fp32, _ = load_model(llama_dir, "fp32")
    fp16, _ = load_model(llama_dir, "fp16")
    assert fp16.dtype == torch.float16
    _, ref = braid_prefill(fp32, PROMPTS)
    _, ours = braid_prefill(fp16, PROMPTS)
    for a, b in zip(ours, ref):
        assert a.dtype == torch.float32  # logits are always fp32
        assert rel_err(a, b) < 1e-2
