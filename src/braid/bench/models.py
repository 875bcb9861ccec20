"""Random-weight Llama checkpoints of fixed shapes, written by `transformers`, for benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# name -> LlamaConfig fields (vocabulary 32,000 as in Llama 2; tied embeddings)
CONFIGS: dict[str, dict] = {
    "llama-30m": dict(
        hidden_size=384,
        num_hidden_layers=10,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=1152,
    ),
    "llama-120m": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        intermediate_size=2560,
    ),
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    ),
}
VOCAB = 32000


def word_level_tokenizer(path: Path, vocab_size: int) -> None:
    """A tokenizer with one token per id ("t0" ... ), enough for token-id prompts."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "t2"}))


def random_checkpoint(name: str, path: Path, seed: int = 0) -> Path:
    """Save a random `name` model (bf16) plus a tokenizer to `path`, once."""
    if (path / "config.json").exists():
        return path
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=2048, tie_word_embeddings=True, **CONFIGS[name]
    )
    model = tf.LlamaForCausalLM(config).to(torch.bfloat16)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    word_level_tokenizer(path, VOCAB)
    return path


def streamed_weight_bytes(model_dir: Path, bytes_per_param: int = 2) -> int:
    """Bytes of weights a decoding pass must read: every matrix once, the head included, but
    not the embedding table (a pass gathers a few rows of it)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    d, ffn, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = (
        cfg["num_attention_heads"],
        cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
    )
    head_dim = cfg.get("head_dim") or d // heads
    attn = d * heads * head_dim * 2 + d * kv * head_dim * 2
    per_layer = attn + 3 * d * ffn + 2 * d
    return (layers * per_layer + d + cfg["vocab_size"] * d) * bytes_per_param
