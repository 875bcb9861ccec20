"""GGUF files (llama.cpp's format) -> a Hugging Face-format model: config, tensors, tokenizer.

Read with `gguf.GGUFReader`, the reader llama.cpp maintains; tensors are dequantized with
`gguf.quants`. The mappings are data, as in transformers' integrations/ggml.py: a config table
per architecture (GGUF key -> config.json field) and one tensor table for the Llama family.

A GGUF is turned into an ordinary model directory once (`write_model_dir`), so everything after
loading — the tokenizer, the chat template, `braid info`, `transformers` as the reference — reads
the same files it reads for any checkpoint. `braid convert` writes that directory where the user
asks; `LLM("model.gguf")` keeps it in a cache keyed by the file's identity (model/gguf_cache.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from braid.errors import ModelLoadError

GGUF_MAGIC = b"GGUF"

# llama.cpp architecture -> (transformers architecture, q/k rows permuted by llama.cpp's converter)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "llama": ("LlamaForCausalLM", True),
    "mistral": ("MistralForCausalLM", True),
    "qwen2": ("Qwen2ForCausalLM", False),
    "qwen3": ("Qwen3ForCausalLM", False),
}

# GGUF key (after "<arch>.") -> config.json field; the same for every supported architecture
CONFIG_KEYS: dict[str, str] = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
}

# quantization types whose dequantization braid's tests check against transformers' own GGUF
# loader; gguf.quants reads more (IQ*, TQ*), which load with a warning-free error if it cannot
SUPPORTED_TYPES = (
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)  # fmt: skip

# llama.cpp tensor name -> Hugging Face name; `{i}` is the layer
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(.+)")

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
_CONTROL, _USER_DEFINED = 3, 4

# the text splits a byte-level BPE vocabulary was trained with, by `tokenizer.ggml.pre`; the
# names in GPT2_SPLIT_NAMES use GPT-2's split (ByteLevel's own regex), any other is refused
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT2_SPLIT_NAMES = (None, "default", "gpt2", "gpt-2", "smollm")
PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


@dataclass
class GGUFModel:
    """Everything a model directory needs, read from one GGUF file."""

    config: dict[str, Any]  # config.json
    generation_config: dict[str, Any]  # generation_config.json
    tokenizer_json: str  # tokenizer.json
    tokenizer_config: dict[str, Any]  # tokenizer_config.json (special tokens, chat_template)
    state: dict[str, torch.Tensor]  # Hugging Face tensor names


def open_reader(path: Path):
    """A `gguf.GGUFReader` for `path`, or a ModelLoadError that says what is wrong with it."""
    try:
        import gguf
    except ImportError:
        raise ModelLoadError(
            "reading GGUF files needs the gguf package: pip install 'gguf>=0.10'"
        ) from None
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot be read ({e})") from None
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, IndexError, struct errors...
        raise ModelLoadError(
            f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})"
        ) from None


def field_value(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_gguf(path: str | Path, dtype: torch.dtype | None = torch.float32) -> GGUFModel:
    """Read a GGUF file: config, generation config, tokenizer and dequantized tensors (none
    with `dtype=None`: the weights are then read from the file itself, kept quantized)."""
    path = Path(path)
    reader = open_reader(path)
    config = gguf_config(reader, path)
    tokenizer_json, tokenizer_config, special = gguf_tokenizer(reader, path)
    generation = {k: v for k, v in special.items() if v is not None}
    generation.update(_sampling_defaults(reader))
    state = {} if dtype is None else gguf_tensors(reader, path, config, dtype)
    config["tie_word_embeddings"] = "output.weight" not in {t.name for t in reader.tensors}
    config["bos_token_id"] = special.get("bos_token_id")
    config["eos_token_id"] = special.get("eos_token_id")
    return GGUFModel(config, generation, tokenizer_json, tokenizer_config, state)


def gguf_config(reader, path: Path) -> dict[str, Any]:
    """config.json fields from the metadata (Hugging Face names)."""
    prefix = field_value(reader, "general.architecture")  # metadata keys live under this name
    name = str(field_value(reader, "general.name", "") or "")
    arch = "mistral" if prefix == "llama" and "mistral" in name.lower() else prefix
    if arch not in ARCHITECTURES:  # llama.cpp writes Mistral as llama (above)
        raise ModelLoadError(
            f"{path}: GGUF architecture {arch!r} is not supported; braid runs "
            f"{', '.join(ARCHITECTURES)}"
        )
    hf_arch, _ = ARCHITECTURES[arch]
    cfg: dict[str, Any] = {"architectures": [hf_arch], "model_type": arch}
    for key, hf_key in CONFIG_KEYS.items():
        value = field_value(reader, f"{prefix}.{key}")
        if value is not None:
            cfg[hf_key] = value
    missing = [
        k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if k not in cfg
    ]  # fmt: skip
    if missing:
        raise ModelLoadError(f"{path}: GGUF metadata lacks {', '.join(missing)} for {arch}")
    if "vocab_size" not in cfg:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise ModelLoadError(f"{path}: GGUF metadata has no vocabulary size nor tokens")
        cfg["vocab_size"] = len(tokens.data)
    scaling = field_value(reader, f"{prefix}.rope.scaling.type")
    names = {t.name for t in reader.tensors}
    if scaling not in (None, "none") or "rope_freqs.weight" in names:
        raise ModelLoadError(
            f"{path}: rope scaling ({scaling or 'rope_freqs factors'}) in GGUF files is not "
            "supported yet; convert the original Hugging Face checkpoint instead"
        )
    cfg.setdefault("rope_theta", 10000.0)
    if hf_arch == "MistralForCausalLM":
        cfg["sliding_window"] = None  # llama.cpp runs these files with full attention
    if hf_arch == "Qwen2ForCausalLM":
        cfg["attention_bias"] = "blk.0.attn_q.bias" in names
    cfg["hidden_act"] = "silu"
    return cfg


@dataclass
class GGUFTensor:
    """One tensor of the file under its Hugging Face name, not yet dequantized."""

    name: str
    qtype: str  # GGML quantization type name: F32, Q4_1, Q8_0, ...
    shape: tuple[int, ...]  # Hugging Face order (GGUF lists dimensions fastest first)
    data: Any  # the reader's (memory-mapped) numpy view of the raw blocks
    row_heads: int | None  # heads to un-permute the rows by (llama q/k), else None

    def dequantize(self) -> torch.Tensor:
        """fp32, rows in Hugging Face order."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        try:
            values = dequantize(self.data, GGMLQuantizationType[self.qtype])
            values = np.array(values, dtype=np.float32).reshape(self.shape)
        except (ValueError, NotImplementedError) as e:
            raise ModelLoadError(f"tensor {self.name!r} cannot be read ({e})") from None
        tensor = torch.from_numpy(values)
        return tensor if self.row_heads is None else unpermute_rows(tensor, self.row_heads)


def gguf_tensor_list(reader, path: Path, config: dict[str, Any]) -> list[GGUFTensor]:
    """Every tensor of the file, named and checked, in file order."""
    from gguf import GGMLQuantizationType

    hf_arch = config["architectures"][0]
    permuted = next(p for a, p in ARCHITECTURES.values() if a == hf_arch)
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads")
    out = []
    for t in reader.tensors:
        name = hf_tensor_name(t.name)
        if name is None:
            raise ModelLoadError(f"{path}: unexpected tensor {t.name!r} for {hf_arch}")
        qtype = GGMLQuantizationType(t.tensor_type)
        if qtype.name not in SUPPORTED_TYPES:
            raise ModelLoadError(
                f"{path}: tensor {t.name!r} has quantization type {qtype.name}, which braid "
                f"does not read; supported: {', '.join(SUPPORTED_TYPES)}"
            )
        row_heads = None
        if permuted and name.endswith(("q_proj.weight", "q_proj.bias")):
            row_heads = heads
        elif permuted and name.endswith(("k_proj.weight", "k_proj.bias")):
            row_heads = kv_heads or heads
        shape = tuple(int(d) for d in reversed(t.shape))
        out.append(GGUFTensor(name, qtype.name, shape, t.data, row_heads))
    return out


def gguf_tensors(
    reader, path: Path, config: dict[str, Any], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Dequantized tensors under Hugging Face names, q/k rows back in Hugging Face order."""
    state = {}
    for t in gguf_tensor_list(reader, path, config):
        try:
            state[t.name] = t.dequantize().to(dtype)
        except ModelLoadError as e:
            raise ModelLoadError(f"{path}: {e}") from None
    return state


def hf_tensor_name(name: str) -> str | None:
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    m = _LAYER_NAME.fullmatch(name)
    if m and m.group(2) in _LAYER_TENSORS:
        return f"model.layers.{m.group(1)}.{_LAYER_TENSORS[m.group(2)]}"
    return None


def unpermute_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order: within each head it interleaves the two rotary halves
    (convert_hf_to_gguf.py `permute`) because its rope rotates adjacent pairs."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tokenizer(reader, path: Path) -> tuple[str, dict[str, Any], dict[str, int | None]]:
    """(tokenizer.json text, tokenizer_config.json, special ids) from the GGUF vocabulary.

    Byte-level BPE (`tokenizer.ggml.model == "gpt2"`: SmolLM, Llama 3, Qwen) is built here with
    the `tokenizers` library, so the default model loads without transformers. SentencePiece
    vocabularies (`llama`: Llama 2, Mistral) go through transformers' GGUF converter, which
    carries each family's normalizer and byte-fallback quirks; it is not worth a copy here.
    """
    model = field_value(reader, "tokenizer.ggml.model")
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelLoadError(f"{path}: the GGUF file holds no tokenizer (tokenizer.ggml.tokens)")
    special = {
        key: field_value(reader, f"tokenizer.ggml.{gguf_key}")
        for key, gguf_key in (
            ("bos_token_id", "bos_token_id"),
            ("eos_token_id", "eos_token_id"),
            ("pad_token_id", "padding_token_id"),
            ("unk_token_id", "unknown_token_id"),
        )
    }
    eot = field_value(reader, "tokenizer.ggml.eot_token_id")
    if eot is not None and eot != special["eos_token_id"]:  # end of turn also ends generation
        special["eos_token_id"] = [i for i in (special["eos_token_id"], eot) if i is not None]
    if model == "gpt2":
        tok = _byte_level_bpe(reader, tokens, path)
    elif model in ("llama", "t5"):
        tok = _transformers_tokenizer(path)
    else:
        raise ModelLoadError(
            f"{path}: tokenizer model {model!r} is not supported; braid reads 'gpt2' "
            "(byte-level BPE) and, with transformers installed, 'llama' (SentencePiece)"
        )

    def text(token_id: Any) -> str | None:
        return tokens[token_id] if isinstance(token_id, int) and token_id < len(tokens) else None

    eos_ids = special["eos_token_id"]
    first_eos = eos_ids[0] if isinstance(eos_ids, list) else eos_ids
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": text(special["bos_token_id"]),
        "eos_token": text(first_eos),
        "pad_token": text(special["pad_token_id"]),
        "unk_token": text(special["unk_token_id"]),
        "add_bos_token": bool(field_value(reader, "tokenizer.ggml.add_bos_token", False)),
        "model_max_length": None,
    }
    template = field_value(reader, "tokenizer.chat_template")
    if template:
        tokenizer_config["chat_template"] = template
    tokenizer_config = {k: v for k, v in tokenizer_config.items() if v is not None}
    return tok.to_str(), tokenizer_config, {k: v for k, v in special.items() if k != "unk_token_id"}


def _byte_level_bpe(reader, tokens: list[str], path: Path):
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    merges_field = field_value(reader, "tokenizer.ggml.merges") or []
    merges = [tuple(m.split(" ", 1)) for m in merges_field]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = field_value(reader, "tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZER_SPLITS and pre not in GPT2_SPLIT_NAMES:
        known = ", ".join(sorted([*PRE_TOKENIZER_SPLITS, *(n for n in GPT2_SPLIT_NAMES if n)]))
        raise ModelLoadError(
            f"{path}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported, and guessing "
            f"its text split would tokenize wrongly; braid knows {known}"
        )
    split = PRE_TOKENIZER_SPLITS.get(pre)
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # control tokens (<|im_start|>, <|endoftext|>) stay whole and are dropped by decode;
    # user-defined ones (<think>) stay whole and are kept, as llama.cpp matches both in text
    types = field_value(reader, "tokenizer.ggml.token_type") or []
    # llama.cpp writes added tokens as their text (<｜User｜>), not in the byte alphabet; each is
    # already in `vocab`, so adding it keeps its id
    added = [
        AddedToken(t, special=kind == _CONTROL, normalized=False)
        for t, kind in zip(tokens, types)
        if kind in (_CONTROL, _USER_DEFINED)
    ]
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])
    if field_value(reader, "tokenizer.ggml.add_bos_token", False):
        bos = field_value(reader, "tokenizer.ggml.bos_token_id")
        if bos is not None:
            tok.post_processor = processors.Sequence(
                [
                    processors.ByteLevel(trim_offsets=False),
                    processors.TemplateProcessing(
                        single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B",
                        special_tokens=[(tokens[bos], bos)],
                    ),
                ]
            )  # fmt: skip
    return tok


def _transformers_tokenizer(path: Path):
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            convert_gguf_tokenizer,
            get_gguf_tokenizer,
        )
    except ImportError:
        raise ModelLoadError(
            f"{path}: its SentencePiece vocabulary is converted by transformers' GGUF code: "
            "pip install 'transformers>=5' (or convert the model once with `braid convert`)"
        ) from None
    architecture, tokenizer_dict, _ = get_gguf_tokenizer(str(path))
    tok, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    return tok


def _sampling_defaults(reader) -> dict[str, Any]:
    """generation_config.json sampling fields from GGUF `general.sampling.*`, where present."""
    keys = {"temp": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p"}
    out = {}
    for gguf_key, hf_key in keys.items():
        value = field_value(reader, f"general.sampling.{gguf_key}")
        if value is not None:
            out[hf_key] = value
    if out:
        out["do_sample"] = out.get("temperature", 1.0) > 0
    return out


def write_model_dir(model: GGUFModel, out: Path, source: dict[str, Any] | None = None) -> None:
    """Write `model` as a Hugging Face directory into `out` (which must exist and be empty)."""
    from safetensors.torch import save_file

    config = dict(model.config)
    if model.state:  # else a directory of everything but the weights (read from the GGUF)
        state = {k: v.contiguous() for k, v in model.state.items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        config["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(model.generation_config, indent=2))
    (out / "tokenizer.json").write_text(model.tokenizer_json)
    (out / "tokenizer_config.json").write_text(json.dumps(model.tokenizer_config, indent=2))
    if source is not None:
        (out / "gguf_source.json").write_text(json.dumps(source, indent=2) + "\n")
