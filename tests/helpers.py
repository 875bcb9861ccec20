"""Tiny random-weight checkpoints written by `transformers`, the independent reference."""

from __future__ import annotations

from pathlib import Path

import torch

TINY = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)

ARCHS = ["llama", "llama3-rope", "mistral", "qwen2", "qwen3"]


def hf_config(arch: str, **overrides):
    import transformers as tf

    kw = dict(TINY, **overrides)
    if arch == "llama":
        return tf.LlamaConfig(**kw, tie_word_embeddings=True)
    if arch == "llama3-rope":
        kw["max_position_embeddings"] = max(kw["max_position_embeddings"], 512)
        return tf.LlamaConfig(
            **kw,
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        )
    if arch == "mistral":
        kw.setdefault("sliding_window", None)
        return tf.MistralConfig(**kw)
    if arch == "qwen2":
        return tf.Qwen2Config(**kw, tie_word_embeddings=True)
    if arch == "qwen3":
        kw.setdefault("head_dim", 32)
        return tf.Qwen3Config(**kw)
    raise ValueError(arch)


CORPUS = (
    "The quick brown fox jumps over the lazy dog. def main(): return 42\n"
    "Ünïcödé façade, naïve café; 東京 and emoji 🙂🚀 live in bytes. " * 20
)


def make_tokenizer(path: Path, vocab_size: int = 300) -> None:
    """A byte-level BPE tokenizer (the `tokenizers` library) with an <|endoftext|> eos token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([CORPUS], trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}'
    )


def make_hf_model(arch: str, path: Path, seed: int = 0, **overrides) -> Path:
    """Save a random model with visibly non-trivial weights (biases and norms not all zero/one)."""
    import transformers as tf

    torch.manual_seed(seed)
    config = hf_config(arch, **overrides)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0.0, 0.08)
    model.save_pretrained(path)
    make_tokenizer(path)
    return path


def hf_model(path: Path, dtype=torch.float32):
    import transformers as tf

    return tf.AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation="eager"
    ).eval()


def hf_masked_logits(ref, ids, positions, visible: torch.Tensor) -> torch.Tensor:
    """transformers' forward over a whole sequence with a hand-written [T, T] visibility.

    transformers 5 uses a 4-D float mask as given, so this is an independent reference for any
    token graph (forks, joins, trees) flattened into one sequence.
    """
    mask = torch.zeros(visible.shape, dtype=torch.float32)
    mask.masked_fill_(~visible, torch.finfo(torch.float32).min)
    with torch.no_grad():
        out = ref(
            torch.tensor([ids]),
            position_ids=torch.tensor([positions]),
            attention_mask=mask[None, None],
        )
    return out.logits[0]


def noisy_copy(src: Path, dst: Path, scale: float, seed: int) -> Path:
    """`src` with Gaussian noise on every weight: a draft that agrees with it often, not always."""
    import shutil

    model = hf_model(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    model.save_pretrained(dst)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, dst / f)
    return dst


def braid_prefill(model, prompts: list[list[int]]):
    """braid's logits for every position of each prompt, one ragged batch: (graphs, rows)."""
    from braid.model.batch import Append, build_batch

    pool = model.new_pool(len(prompts))
    graphs = [pool.new_graph() for _ in prompts]
    batch = build_batch(
        [Append(g, p, list(range(len(p)))) for g, p in zip(graphs, prompts)], model.windows
    )
    logits, _ = model.forward(batch)
    rows = [logits[o : o + len(p)] for o, p in zip(batch.offsets, prompts)]
    return graphs, rows


def seeded_two_token_runs(llm, prompt: list[int], exact: dict, method, n: int = 800):
    """n seeded top-4 runs of two tokens: (outputs, counts of each pair, total variation to
    the `exact` distribution of pairs)."""
    from braid import SamplingParams

    params = [SamplingParams(max_tokens=2, top_k=4, seed=s, ignore_eos=True) for s in range(n)]
    outs = llm.generate([prompt] * n, params, method=method)
    counts: dict = {}
    for o in outs:
        counts[tuple(o.token_ids)] = counts.get(tuple(o.token_ids), 0) + 1
    keys = set(counts) | set(exact)
    tv = 0.5 * sum(abs(counts.get(k, 0) / n - exact.get(k, 0.0)) for k in keys)
    return outs, counts, tv


def training_mask_logits(model, ids: list[int], tags: dict[str, int]):
    """One `transformers` pass over a tagged sequence with the Multiverse training mask and
    positions: (logits [T, V], visibility [T, T])."""
    import torch

    from braid.multiverse.attention import multiverse_layout

    positions, visible = multiverse_layout(ids, tags)
    mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
    with torch.no_grad():
        logits = model(
            input_ids=torch.tensor([ids]),
            attention_mask=mask[None, None],
            position_ids=positions[None],
        ).logits[0]
    return logits, visible
