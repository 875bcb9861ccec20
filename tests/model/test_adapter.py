"""peft LoRA adapters merged at load: braid's logits against peft's own merged model."""

import json
import shutil

import pytest
import torch
from helpers import braid_prefill, hf_model

from braid import LLM, SamplingParams
from braid.errors import ModelLoadError
from braid.model import load_model

peft = pytest.importorskip("peft")  # a dev dependency: CI has it, the reference needs it

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = [[5, 7, 9, 311, 13, 2, 3, 200, 310], [1, 2, 3], [100, 323, 50, 321, 70, 8]]


def adapter(base_dir, out, grow: int = 0, tokens=(310, 311), whole=False, **lora):
    """A peft adapter with every trained tensor moved off its (identity) initialisation, and
    the merged model peft itself makes from it. `grow` new embedding rows are trained too."""
    model = hf_model(base_dir)
    if grow:
        model.resize_token_embeddings(model.config.vocab_size + grow, mean_resizing=False)
        tokens = tuple(tokens) + tuple(
            range(model.config.vocab_size - grow, model.config.vocab_size)
        )
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=LINEARS, trainable_token_indices=list(tokens), **lora
    )
    wrapped = peft.get_peft_model(model, config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in wrapped.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    # what braid's trainer saves: only the trained rows (peft's default for a resized embedding
    # also stores the whole matrix, `whole`)
    wrapped.save_pretrained(out, save_embedding_layers=whole)
    return wrapped.merge_and_unload().eval()


def reference_logits(merged, prompts):
    with torch.no_grad():
        return [merged(torch.tensor([p])).logits[0] for p in prompts]


@pytest.mark.parametrize("rslora", [False, True])
def test_merged_logits_equal_peft_merge_and_unload(llama_dir, tmp_path, rslora):
    merged = adapter(llama_dir, tmp_path / "a", use_rslora=rslora)
    model, _ = load_model(llama_dir, "fp32", adapter=tmp_path / "a")
    plain, _ = load_model(llama_dir, "fp32")
    prompts = [p for p in PROMPTS if max(p) < 320]
    _, ours = braid_prefill(model, prompts)
    _, before = braid_prefill(plain, prompts)
    for o, b, ref in zip(ours, before, reference_logits(merged, prompts)):
        torch.testing.assert_close(o.float(), ref, atol=2e-5, rtol=1e-4)
        assert (b.float() - ref).abs().max() > 0.05  # the adapter changed them


@pytest.mark.parametrize("whole", [False, True])
def test_new_token_rows_grow_the_vocabulary(llama_dir, tmp_path, whole):
    """A fine-tune that added 4 tokens (as the Multiverse tags are added) trains their rows as
    peft trainable tokens: braid grows its 320 embeddings to 324 and takes them."""
    merged = adapter(llama_dir, tmp_path / "a", grow=4, whole=whole)
    model, _ = load_model(llama_dir, "fp32", adapter=tmp_path / "a")
    assert model.config.vocab_size == 324
    _, ours = braid_prefill(model, PROMPTS)
    for o, ref in zip(ours, reference_logits(merged, PROMPTS)):
        assert o.shape == ref.shape == (o.shape[0], 324)
        torch.testing.assert_close(o.float(), ref, atol=2e-5, rtol=1e-4)


def test_llm_takes_the_adapters_tokenizer_and_generates_like_peft(llama_dir, tmp_path):
    merged = adapter(llama_dir, tmp_path / "a")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama_dir / f, tmp_path / "a" / f)
    llm = LLM(llama_dir, dtype="fp32", adapter=tmp_path / "a")
    ids = [5, 7, 9, 11]
    out = llm.generate([ids], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    with torch.no_grad():
        ref = merged.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert out[0].token_ids == ref[0, len(ids) :].tolist()


def test_adapters_braid_cannot_merge_are_refused(llama_dir, tmp_path):
    adapter(llama_dir, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    for change, word in [({"use_dora": True}, "use_dora"), ({"peft_type": "IA3"}, "peft_type")]:
        (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(config | change))
        with pytest.raises(ModelLoadError, match=word):
            load_model(llama_dir, "fp32", adapter=tmp_path / "a")
    with pytest.raises(ModelLoadError, match="not a peft adapter"):
        load_model(llama_dir, "fp32", adapter=tmp_path)
