"""Quantized weights kept quantized (model/quant.py, model/gguf_weights.py).

References: gguf-py's own dequantization (gguf.quants) for the integer mapping; a numpy decoder
of the GGUF blocks written here from the format's definition, with the kernel's bf16 scales, for
the weights the model runs; transformers on those weights for the model; plain fp32 matmuls for
the kernels and the logit head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf_files import write_gguf
from test_parity import PROMPTS, braid_prefill, rel_err

from braid import ModelLoadError
from braid.model import load_model
from braid.model.gguf import read_gguf
from braid.model.head import LogitHead
from braid.model.linear import Linear
from braid.model.loader import make_linear, resolve_weights
from braid.model.quant import (
    QuantLinear,
    QuantWeight,
    from_gguf,
    quantize_int4,
    quantize_int8,
    split_int8_groups,
)

EXACT = ["Q4_0", "Q4_1", "Q8_0"]
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAID_CACHE_DIR", str(tmp_path / "cache"))


def bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.asarray(x, np.float32)).bfloat16().float().numpy()


def decode_blocks(raw: np.ndarray, qtype: str, shape, scale_round=lambda x: x) -> np.ndarray:
    """The GGUF block formats from their definition (ggml-common.h), one block per 32 weights."""
    n, k = shape
    b = raw.reshape(n * k // 32, BLOCK_BYTES[qtype])
    d = scale_round(b[:, :2].copy().view(np.float16).astype(np.float32))
    if qtype == "Q8_0":
        return (d * b[:, 2:].copy().view(np.int8)).reshape(n, k)
    qs = b[:, -16:]
    q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32)
    if qtype == "Q4_0":
        return (d * (q - 8)).reshape(n, k)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    # the kernel keeps (q - 8) * d + (m + 8 d): zero = m + 8 d rounded, d rounded
    zero = scale_round(m + 8 * b[:, :2].copy().view(np.float16).astype(np.float32))
    return ((q - 8) * d + zero).reshape(n, k)


def file_tensors(path):
    from gguf import GGMLQuantizationType, GGUFReader

    for t in GGUFReader(str(path)).tensors:
        shape = tuple(int(x) for x in reversed(t.shape))
        yield t.name, GGMLQuantizationType(t.tensor_type).name, shape, np.asarray(t.data)


@pytest.mark.parametrize("qtype", EXACT)
def test_gguf_integers_map_onto_the_kernels_exactly(qtype, model_dirs, tmp_path):
    """With fp32 scales the mapping reproduces gguf-py's dequantization bit for bit; with the
    kernel's bf16 scales it equals the block decoder's reading of the same rounding."""
    path = write_gguf(model_dirs["qwen2"], tmp_path / f"{qtype}.gguf", "qwen2", qtype)
    for name, file_type, shape, data in file_tensors(path):
        if file_type != qtype:
            continue
        w = from_gguf(torch.from_numpy(data.reshape(-1).copy()), qtype, shape)
        s = w.scales.repeat_interleave(32, -1)
        z = w.zeros.repeat_interleave(32, -1)
        exact = ((w.q.float() - 8) * s + z).sum(0).numpy()
        np.testing.assert_array_equal(exact, decode_blocks(data, qtype, shape), err_msg=name)
        # the kernel's model: scales (and Q4_1's zero) rounded to bf16
        ours = w.dequantize().numpy()
        if qtype == "Q8_0":  # the two halves' scales 16 d and d round as d does
            np.testing.assert_array_equal(ours, decode_blocks(data, qtype, shape, bf16))
        else:
            np.testing.assert_allclose(
                ours, decode_blocks(data, qtype, shape, bf16), rtol=0, atol=1e-6
            )


def test_gguf_mapping_equals_gguf_py_dequantization(model_dirs, tmp_path):
    path = write_gguf(model_dirs["llama"], tmp_path / "q41.gguf", "llama", "Q4_1")
    dense = read_gguf(path).state  # gguf.quants, then q/k rows un-permuted
    from braid.model.gguf_weights import gguf_weights

    quant = gguf_weights(path, "file")
    for name, w in quant.items():
        if isinstance(w, QuantWeight):  # q/k rows must come back in Hugging Face order
            assert rel_err(w.dequantize(), dense[name]) < 2**-7, name


@pytest.mark.parametrize("bits", [4, 8, 44])
def test_kernels_multiply_by_the_dequantized_weights(bits):
    torch.manual_seed(0)
    w = torch.randn(96, 64)
    if bits == 44:  # Q8_0 split into two int4 halves
        q = torch.randint(-127, 128, (96, 64), dtype=torch.int8)
        qw = split_int8_groups(q, torch.rand(96, 2) * 0.01 + 1e-3)
        np.testing.assert_allclose(  # the halves add up to d * q exactly
            qw.dequantize().numpy(),
            (q.float() * qw.scales[1].to(torch.bfloat16).float().repeat_interleave(32, 1)).numpy(),
            rtol=0,
            atol=0,
        )
    else:
        qw = quantize_int4(w) if bits == 4 else quantize_int8(w)
    x = torch.randn(5, 64)
    ref = x.bfloat16().float() @ qw.dequantize().t()
    bias = torch.randn(96)
    out = QuantLinear(qw, bias)(x).float()
    # bf16 output and bf16 weights inside the kernel: a few units of 2^-8 of each |row|·|x|
    bound = 4 * 2**-8 * (x.norm(dim=1, keepdim=True) * qw.dequantize().abs().norm(dim=1)) + 0.02
    assert ((out - bias - ref).abs() <= bound).all()


@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_at_load_rounds_to_the_nearest_level(bits):
    torch.manual_seed(1)
    w = torch.randn(64, 96) * torch.rand(64, 1)
    qw = quantize_int4(w) if bits == 4 else quantize_int8(w)
    err = (qw.dequantize() - w).abs()
    if bits == 8:
        step = qw.scales.to(torch.bfloat16).float()[:, None]
    else:
        step = qw.scales[0].to(torch.bfloat16).float().repeat_interleave(32, 1)
    # half a step, plus the bf16 rounding of the zero point
    slack = 0 if bits == 8 else 2**-8 * qw.zeros[0].abs().repeat_interleave(32, 1)
    assert (err <= step / 2 + slack + 1e-6).all()


@pytest.mark.parametrize("kind", ["int4", "int8", "q8_split"])
def test_quantized_logit_head_top_logits_are_fp32_exact(kind):
    """The refined head's argmax, and every logit that nearly ties with it, equal an fp32
    matmul with the quantized model's weights, including on rows built to nearly tie."""
    torch.manual_seed(2)
    vocab, d = 500, 64
    w = torch.randn(vocab, d)
    w[1] = w[0] + 1e-3 * torch.randn(d)  # a near-tie between rows 0 and 1
    if kind == "int4":
        qw = quantize_int4(w)
    elif kind == "int8":
        qw = quantize_int8(w)
    else:
        qw = split_int8_groups(
            torch.randint(-127, 128, (vocab, d), dtype=torch.int8), torch.rand(vocab, 2) * 0.02
        )
    head = LogitHead(qw, torch.bfloat16)
    hidden = torch.randn(64, d)
    hidden[:8] = qw.dequantize()[0] * 3  # hidden states that point at the near-tied rows
    ours = head(hidden)
    ref = hidden @ qw.dequantize().t()
    assert torch.equal(ours.argmax(1), ref.argmax(1))
    best = ref.max(dim=1, keepdim=True).values
    near = ref >= best - 1e-3 * best.abs()  # inside any rounding band around the best
    assert near[:8].sum() >= 16  # the built near-ties are among them
    torch.testing.assert_close(ours[near], ref[near], rtol=1e-5, atol=1e-5)


def test_mixed_kinds_run_side_by_side():
    torch.manual_seed(3)
    a, b = torch.randn(32, 64), torch.randn(96, 64)
    qa = quantize_int4(a)
    lin = make_linear([qa, b.bfloat16()], None, torch.bfloat16)
    x = torch.randn(3, 64)
    ref = x @ torch.cat([qa.dequantize(), b.bfloat16().float()]).t()
    assert rel_err(lin(x), ref) < 2e-2
    assert isinstance(make_linear([a, b], None, torch.float32), Linear)


def _reference_state(path):
    """The quantized model's own weights, decoded here from the file's blocks (bf16 scales)."""
    from gguf_files import gguf_name

    state = read_gguf(path).state  # norms, and the layout under Hugging Face names
    for name, qtype, shape, data in file_tensors(path):
        if qtype not in EXACT:
            continue
        hf = next(k for k in state if gguf_name(k) == name)
        state[hf] = torch.from_numpy(decode_blocks(data, qtype, shape, bf16))
    return state


@pytest.mark.parametrize("qtype", EXACT)
def test_quantized_model_matches_transformers_on_its_own_weights(qtype, model_dirs, tmp_path):
    """qwen2 (no q/k permutation, qkv bias): braid on the file's integers against transformers
    in fp32 on the same weights; the gap is the bf16 activations, bounded here."""
    import transformers as tf

    source = model_dirs["qwen2"]
    path = write_gguf(source, tmp_path / f"{qtype}.gguf", "qwen2", qtype)
    model, _ = load_model(path)  # weights="auto": the file's integers
    assert any(isinstance(w.qkv, QuantLinear) for w in model.layers)
    ref = tf.AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).eval()
    ref.load_state_dict(_reference_state(path), strict=False)
    dense, _ = load_model(path, "bf16")  # the same file dequantized to bf16, for scale
    _, ours = braid_prefill(model, PROMPTS)
    _, base = braid_prefill(dense, PROMPTS)
    with torch.no_grad():
        for p, q_rows, b_rows in zip(PROMPTS, ours, base):
            want = ref(torch.tensor([p])).logits[0]
            # no further from the reference than bf16 rounding puts the dense bf16 model
            assert rel_err(q_rows, want) < max(2 * rel_err(b_rows, want), 1e-2)


def test_weights_option_resolution():
    bf16_, f32 = torch.bfloat16, torch.float32
    assert resolve_weights(None, None, gguf=True) == (bf16_, "file")
    assert resolve_weights("auto", "fp32", gguf=True) == (f32, None)  # explicit dtype: dense
    assert resolve_weights("fp32", None, gguf=True) == (f32, None)
    assert resolve_weights("int8", None, gguf=False) == (bf16_, "int8")
    assert resolve_weights("int4", "bf16", gguf=True) == (bf16_, "int4")
    for bad in [("int4", "fp32"), ("bf16", "fp32"), ("int3", None)]:
        with pytest.raises(ModelLoadError, match="weights"):
            resolve_weights(*bad, gguf=True)


def _run_weights(model) -> dict[str, torch.Tensor]:
    """The fp32 weights braid's quantized linears multiply, under Hugging Face names."""
    c = model.config
    state = {"model.embed_tokens.weight": model.embed.float(), "model.norm.weight": model.norm}
    for i, w in enumerate(model.layers):
        p = f"model.layers.{i}."
        q, k, v = w.qkv.weight.dequantize().split([c.q_size, c.kv_size, c.kv_size])
        gate, up = w.gate_up.weight.dequantize().chunk(2)
        state |= {
            p + "self_attn.q_proj.weight": q,
            p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": w.o.weight.dequantize(),
            p + "mlp.gate_proj.weight": gate,
            p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": w.down.weight.dequantize(),
            p + "input_layernorm.weight": w.input_norm.float(),
            p + "post_attention_layernorm.weight": w.post_norm.float(),
        }
    state["lm_head.weight"] = model.lm_head.quant.dequantize()
    return state


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_any_checkpoint_quantized_at_load_matches_transformers_on_those_weights(
    weights, model_dirs
):
    """mistral (untied head): quantized at load, then held to transformers in fp32 on the
    weights it quantized to; the gap is bf16 activations (the dense bf16 model's, at most 2x)."""
    import transformers as tf

    source = model_dirs["mistral"]
    model, _ = load_model(source, weights=weights)
    dense, _ = load_model(source, "fp32")
    assert model.weight_bytes() < dense.weight_bytes() / (3 if weights == "int8" else 5)
    ref = tf.AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).eval()
    missing, unexpected = ref.load_state_dict(_run_weights(model), strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    bf, _ = load_model(source, "bf16")
    _, ours = braid_prefill(model, PROMPTS)
    _, base = braid_prefill(bf, PROMPTS)
    _, fp32 = braid_prefill(dense, PROMPTS)
    with torch.no_grad():
        for p, q_rows, b_rows, f_rows in zip(PROMPTS, ours, base, fp32):
            want = ref(torch.tensor([p])).logits[0]
            assert rel_err(q_rows, want) < max(2 * rel_err(b_rows, f_rows), 1e-2)


def test_second_load_reads_the_cached_weights_and_runs_the_same_model(model_dirs, tmp_path):
    path = write_gguf(model_dirs["llama"], tmp_path / "q8.gguf", "llama", "Q8_0")
    first, model_dir = load_model(path)
    assert (model_dir / "weights-file.safetensors").exists()
    assert not (model_dir / "model.safetensors").exists()  # no dequantized copy is written
    again, _ = load_model(path)
    _, a = braid_prefill(first, PROMPTS)
    _, b = braid_prefill(again, PROMPTS)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    # the quantized table's gathered rows are the dequantized rows, in the compute dtype
    ids = torch.tensor([0, 5, 319])
    assert torch.equal(again._embed(ids), again.embed.dequantize()[ids].to(torch.bfloat16))


@pytest.mark.parametrize("offset", [1, 3, 8, 32])
def test_int8_linear_on_misaligned_integers(offset):
    """Integers read from a safetensors file may start at any byte (the int8 kernel's vector
    loads faulted on such a tensor): the linear still multiplies by the dequantized weight."""
    torch.manual_seed(0)
    qw = quantize_int8(torch.randn(320, 64))
    buf = torch.empty(qw.q.numel() + offset, dtype=torch.int8)
    shifted = buf[offset:].view(qw.q.shape)
    shifted.copy_(qw.q)
    x = torch.randn(5, 64)
    ours = QuantLinear(QuantWeight(8, shifted, qw.scales, None))(x).float()
    ref = x.to(torch.bfloat16).float() @ qw.dequantize().t()
    torch.testing.assert_close(ours, ref, rtol=2e-2, atol=2e-2)


def test_info_says_how_each_type_runs_and_that_the_head_is_tied(model_dirs, tmp_path):
    from braid.model.info import describe

    path = write_gguf(model_dirs["llama"], tmp_path / "q41.gguf", "llama", "Q4_1")
    info = describe(path)
    assert "Q4_1 -> int4 kernel" in info["runs_as"]
    assert info["tied_embeddings"] is True  # the tiny llama ties; the file has no output.weight
    model, _ = load_model(path)
    assert isinstance(model.layers[0].gate_up, QuantLinear)


def test_q4_k_sub_blocks_map_onto_the_int4_kernel(tmp_path):
    """gguf cannot write Q4_K: random blocks with sane fp16 scales, as test_gguf does; the
    mapping's weights equal gguf-py's dequantization (fp32 scales), and the model runs them."""
    from helpers import make_hf_model
    from test_gguf import _k_blocks

    wide = make_hf_model(
        "llama", tmp_path / "wide", hidden_size=256, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    path = write_gguf(wide, tmp_path / "q4k.gguf", "llama", "Q4_K", raw_blocks=_k_blocks(rng))
    dense = read_gguf(path).state  # gguf.quants
    from braid.model.gguf_weights import gguf_weights

    quant = gguf_weights(path, "file")
    checked = 0
    for name, w in quant.items():
        if not isinstance(w, QuantWeight):
            continue
        s, z = w.scales.repeat_interleave(32, -1), w.zeros.repeat_interleave(32, -1)
        exact = ((w.q.float() - 8) * s + z).sum(0)
        scale = dense[name].abs().max()
        assert (exact - dense[name]).abs().max() <= 1e-6 * scale, name
        checked += 1
    assert checked >= 7  # q, k, v, o, gate, up, down (and the embedding)
    model, _ = load_model(path)
    assert isinstance(model.layers[0].down, QuantLinear)
    ref, _ = load_model(path, "fp32")
    _, ours = braid_prefill(model, PROMPTS)
    _, want = braid_prefill(ref, PROMPTS)
    for a, b in zip(ours, want):
        assert rel_err(a, b) < 3e-2  # bf16 activations and scales
