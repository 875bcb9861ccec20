"""GGUF loading against transformers' own GGUF loader (its tensor mapping, q/k un-permutation and
dequantization are written independently of gguf-py's), on files written here by GGUFWriter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf_files import write_gguf
from helpers import make_hf_model
from test_parity import PROMPTS, braid_prefill, rel_err

from braid import ModelLoadError
from braid.model import load_model
from braid.model.gguf import read_gguf
from braid.model.tokenizer import Tokenizer

WRITABLE = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
K_QUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def hf_gguf_model(path):
    import transformers as tf

    return tf.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def assert_same_logits(path, prompts=PROMPTS, tol=1e-4):
    ref = hf_gguf_model(path)
    model, _ = load_model(path, "fp32")
    _, rows = braid_prefill(model, prompts)
    with torch.no_grad():
        for p, ours in zip(prompts, rows):
            assert rel_err(ours, ref(torch.tensor([p])).logits[0]) < tol


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAID_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_each_architecture_matches_transformers_gguf_loading(arch, model_dirs, tmp_path):
    source = model_dirs[arch]
    if arch == "qwen3":  # transformers ignores attention.key_length and assumes Qwen3's 128
        source = make_hf_model("qwen3", tmp_path / "qwen3", head_dim=128)
    path = write_gguf(source, tmp_path / f"{arch}.gguf", arch)
    assert_same_logits(path)


@pytest.mark.parametrize("qtype", WRITABLE)
def test_each_writable_quantization_matches_transformers(qtype, model_dirs, tmp_path):
    path = write_gguf(model_dirs["llama"], tmp_path / f"{qtype}.gguf", "llama", qtype)
    if qtype in ("Q5_0", "Q5_1"):  # transformers does not read these: a second definition does
        state = read_gguf(path).state
        ref = _dequant_q5(path, qtype)
        for name, values in ref.items():
            torch.testing.assert_close(state[name], values, rtol=0, atol=0)
        return
    assert_same_logits(path)


def test_quantized_weights_are_near_the_originals(model_dirs, tmp_path):
    """Q8_0 stays within a scale step of the fp32 checkpoint: the mapping kept rows in place."""
    from safetensors.torch import load_file

    path = write_gguf(model_dirs["qwen2"], tmp_path / "q8.gguf", "qwen2", "Q8_0")
    ours = read_gguf(path).state
    for name, w in load_file(str(model_dirs["qwen2"] / "model.safetensors")).items():
        step = w.abs().max() / 127
        assert (ours[name] - w).abs().max() <= step, name


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    """Rows of 256: the block size of the K-quants."""
    root = tmp_path_factory.mktemp("wide")
    return make_hf_model(
        "llama", root / "llama", hidden_size=256, intermediate_size=256, num_attention_heads=4,
        num_key_value_heads=2, num_hidden_layers=1,
    )  # fmt: skip


@pytest.mark.parametrize("qtype", K_QUANTS)
def test_k_quants_match_transformers(qtype, wide_llama, tmp_path):
    """gguf cannot write K-quants, so the blocks are random bytes with sane fp16 scales."""
    rng = np.random.default_rng(0)
    path = write_gguf(
        wide_llama, tmp_path / f"{qtype}.gguf", "llama", qtype, raw_blocks=_k_blocks(rng)
    )
    assert_same_logits(path, tol=1e-4)


def test_real_tokenizer_splits_match_transformers(model_dirs, tmp_path):
    """The Llama 3 and Qwen2 pre-tokenizer splits (`tokenizer.ggml.pre`)."""
    import transformers as tf

    text = "Hello   wörld!! 12345 東京 🙂 it's\n\n  def f(x):\treturn x**2 <|endoftext|>"
    for pre in ("llama-bpe", "qwen2", "smollm", "default"):
        path = write_gguf(model_dirs["llama"], tmp_path / f"{pre}.gguf", "llama", pre=pre)
        ref = tf.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
        _, model_dir = load_model(path, "fp32")
        assert Tokenizer(model_dir).encode(text) == ref(text)["input_ids"], pre


def test_bad_files_are_clear_errors(model_dirs, tmp_path):
    good = write_gguf(model_dirs["llama"], tmp_path / "good.gguf", "llama", "Q8_0")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_model(truncated, "fp32")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(fake, "fp32")
    unknown = tmp_path / "unknown.gguf"
    patched = bytearray(data)
    _set_first_tensor_type(patched, good, 39)  # MXFP4: gguf reads it, braid does not
    unknown.write_bytes(bytes(patched))
    with pytest.raises(ModelLoadError, match="quantization type MXFP4.*supported: F32"):
        load_model(unknown, "fp32")


def test_directory_with_one_gguf_and_cache(model_dirs, tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    path = write_gguf(model_dirs["llama"], d / "m.gguf", "llama", "Q8_0")
    _, first = load_model(d, "fp32")
    _, again = load_model(path, "fp32")
    assert first == again  # the cached directory is reused
    path.write_bytes(path.read_bytes())  # a new modification time: a new entry
    _, changed = load_model(path, "fp32")
    assert changed != first
    (d / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="holds 2 .gguf files"):
        load_model(d, "fp32")


def test_convert_writes_a_directory_transformers_loads(model_dirs, tmp_path):
    import transformers as tf

    from braid.model.gguf_cache import convert

    source = make_hf_model("qwen3", tmp_path / "qwen3", head_dim=128)  # see above
    path = write_gguf(source, tmp_path / "q.gguf", "qwen3", "Q8_0")
    out = convert(path, tmp_path / "out")
    ref = hf_gguf_model(path)
    converted = tf.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        assert rel_err(converted(x).logits, ref(x).logits) < 1e-5
    tok = tf.AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and "assistant:" in tok.chat_template
    with pytest.raises(ModelLoadError, match="not empty"):
        convert(path, out)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelLoadError):
        convert(bad, tmp_path / "never")
    assert not (tmp_path / "never").exists()  # nothing half written


# -- independent definitions --------------------------------------------------------------------


def _dequant_q5(path, qtype):
    """Q5_0 / Q5_1 from ggml's block layout: d (fp16)[, m (fp16)], qh (32 high bits), qs (16
    bytes of low nibbles: elements j and j + 16); x = d * q + m, or d * (q - 16)."""
    import gguf

    from braid.model.gguf import hf_tensor_name

    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        if t.tensor_type.name != qtype:
            continue
        raw = np.asarray(t.data, dtype=np.uint8).reshape(-1, 22 if qtype == "Q5_0" else 24)
        d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
        off = 2 if qtype == "Q5_0" else 4
        m = raw[:, 2:4].copy().view(np.float16).astype(np.float32) if qtype == "Q5_1" else None
        qh = raw[:, off : off + 4].copy().view(np.uint32)[:, 0]
        qs = raw[:, off + 4 :]
        vals = np.empty((raw.shape[0], 32), dtype=np.float32)
        for j in range(16):
            lo = (qs[:, j] & 0x0F) | (((qh >> j) & 1) << 4).astype(np.uint8)
            hi = (qs[:, j] >> 4) | (((qh >> (j + 16)) & 1) << 4).astype(np.uint8)
            for col, q in ((j, lo), (j + 16, hi)):
                q = q.astype(np.float32)
                vals[:, col] = (d[:, 0] * q + m[:, 0]) if m is not None else d[:, 0] * (q - 16)
        shape = tuple(int(x) for x in reversed(t.shape))
        name = hf_tensor_name(t.name)
        out[name] = torch.from_numpy(vals.reshape(shape))
    from braid.model.gguf import unpermute_rows

    for name in list(out):
        if "q_proj" in name:
            out[name] = unpermute_rows(out[name], 4)
        elif "k_proj" in name:
            out[name] = unpermute_rows(out[name], 2)
    return out


# (bytes per 256-element block, byte offsets of fp16 scales)
_K_LAYOUT = {"Q2_K": (84, (80, 82)), "Q3_K": (110, (108,)), "Q4_K": (144, (0, 2)),
             "Q5_K": (176, (0, 2)), "Q6_K": (210, (208,))}  # fmt: skip


def _k_blocks(rng):
    def make(qtype, shape):
        size, halves = _K_LAYOUT[qtype.name]
        blocks = rng.integers(0, 256, size=(shape[0] * shape[1] // 256, size), dtype=np.uint8)
        for off in halves:
            scale = rng.uniform(0.0005, 0.002, size=blocks.shape[0]).astype(np.float16)
            blocks[:, off : off + 2] = scale.view(np.uint8).reshape(-1, 2)
        return blocks.reshape(shape[0], -1)

    return make


def _set_first_tensor_type(data: bytearray, path, new_type: int) -> None:
    """Rewrite the ggml type of the first 2-D tensor in the file's tensor table."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    t = next(t for t in reader.tensors if len(t.shape) == 2)
    # its info record: name length (u64), name, n_dims (u32), dims (u64 each), type (u32), offset
    name = t.name.encode()
    start = bytes(data).index(len(name).to_bytes(8, "little") + name)
    type_at = start + 8 + len(name) + 4 + 8 * len(t.shape)
    data[type_at : type_at + 4] = new_type.to_bytes(4, "little")


def test_unsupported_architecture_names_it_and_the_supported_ones(tmp_path):
    import gguf

    path = tmp_path / "gemma.gguf"
    w = gguf.GGUFWriter(str(path), "gemma")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="'gemma' is not supported; braid runs llama, mistral"):
        load_model(path, "fp32")


def test_an_unknown_pre_tokenizer_is_refused_not_guessed(model_dirs, tmp_path):
    path = write_gguf(model_dirs["llama"], tmp_path / "tekken.gguf", "llama", pre="tekken")
    with pytest.raises(ModelLoadError, match="pre-tokenizer 'tekken'.*braid knows"):
        load_model(path, "fp32")


def test_added_tokens_outside_the_byte_alphabet_stay_whole(model_dirs, tmp_path):
    """llama.cpp writes added tokens as text (DeepSeek's <｜User｜>): one id, decoded back."""
    import json
    import shutil

    src = tmp_path / "src"
    shutil.copytree(model_dirs["llama"], src)
    tok = json.loads((src / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    victim = max(vocab, key=vocab.get)  # the last merge result: replace it by an added token
    tid = vocab.pop(victim)
    tok["model"]["merges"] = [
        m for m in tok["model"]["merges"]
        if ("".join(m) if isinstance(m, list) else m.replace(" ", "")) != victim
    ]  # fmt: skip
    tok["added_tokens"].append({"id": tid, "content": "<｜User｜>", "special": True,
                                "single_word": False, "lstrip": False, "rstrip": False,
                                "normalized": False})  # fmt: skip
    (src / "tokenizer.json").write_text(json.dumps(tok))
    path = write_gguf(src, tmp_path / "ds.gguf", "llama")
    _, model_dir = load_model(path, "fp32")
    t = Tokenizer(model_dir)
    assert t.encode("hi<｜User｜>hi")[1:-1] == [tid] or tid in t.encode("hi<｜User｜>hi")
    assert t.encode("<｜User｜>") == [tid] and tid in t.special_ids()
