"""Writing GGUF files from Hugging Face checkpoints in tests, as llama.cpp's converter lays them
out (its tensor names, its q/k row permutation, its tokenizer keys), with `gguf.GGUFWriter`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

# Hugging Face name (after "model.layers.{i}.") -> llama.cpp name (after "blk.{i}.")
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's convert_hf_to_gguf.py `permute`, written from its definition."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def gguf_name(name: str) -> str:
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    parts = name.split(".")
    return f"blk.{parts[2]}." + LAYER_NAMES[".".join(parts[3:])]


def write_gguf(
    model_dir: Path, out: Path, arch: str, qtype: str = "F32", raw_blocks=None, pre: str = "default"
) -> Path:
    """`model_dir` (a tiny transformers checkpoint) as a GGUF file; 2-D weights in `qtype`
    (quantized by gguf.quants), or, for types gguf cannot write, `raw_blocks(qtype, shape)`
    gives the raw block bytes (the weights are then those bytes, not the checkpoint's)."""
    import gguf

    cfg = json.loads((model_dir / "config.json").read_text())
    state = load_file(str(model_dir / "model.safetensors"))
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(str(out), GGUF_ARCH[arch])
    w.add_name(f"tiny-{arch}")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    rope = cfg.get("rope_parameters") or {}
    w.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg["vocab_size"])
    _add_tokenizer(w, model_dir, cfg["vocab_size"], pre)
    q = gguf.GGMLQuantizationType[qtype]
    for name, t in state.items():
        t = t.float()
        if arch in ("llama", "mistral") and name.endswith(("q_proj.weight", "q_proj.bias")):
            t = permute(t, heads)
        elif arch in ("llama", "mistral") and name.endswith(("k_proj.weight", "k_proj.bias")):
            t = permute(t, kv)
        a = t.numpy()
        if a.ndim == 1 or qtype == "F32":  # llama.cpp keeps norms and biases in F32
            w.add_tensor(gguf_name(name), a.astype(np.float32))
        elif raw_blocks is not None:
            w.add_tensor(gguf_name(name), raw_blocks(q, a.shape), raw_dtype=q)
        elif qtype == "F16":
            w.add_tensor(gguf_name(name), a.astype(np.float16))
        else:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(a, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _add_tokenizer(w, model_dir: Path, vocab_size: int, pre: str) -> None:
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = dict(tok["model"]["vocab"])
    specials = {a["content"]: a["id"] for a in tok.get("added_tokens", [])}
    vocab.update(specials)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]  # llama.cpp pads a vocabulary this way
    types = [5] * vocab_size  # UNUSED
    for text, i in vocab.items():
        tokens[i], types[i] = text, 3 if text in specials else 1  # CONTROL / NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eos = specials["<|endoftext|>"]
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
