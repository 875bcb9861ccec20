"""Load a Hugging Face-format model directory into braid's `Transformer`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from braid.errors import ModelLoadError
from braid.model.config import ModelConfig
from braid.model.linear import Linear
from braid.model.transformer import LayerWeights, Transformer

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def gguf_file(path: Path) -> Path | None:
    """The GGUF file `path` names: itself, or the one `.gguf` in a directory without config.json."""
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise ModelLoadError(
                f"{path} holds {len(found)} .gguf files ({', '.join(f.name for f in found[:4])}); "
                "pass the one to load"
            )
        return found[0] if found else None
    return None


def resolve_model_dir(path: str | Path, dtype: str | torch.dtype | None = None) -> Path:
    """A model directory; a Hugging Face cache entry (`models--org--name`) -> its snapshot; a
    GGUF file (or a directory holding one) -> its converted directory in the cache."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"model {str(p)!r} does not exist")
    gguf = gguf_file(p)
    if gguf is not None:
        from braid.model.gguf_cache import cached_model_dir

        return cached_model_dir(gguf, parse_dtype(dtype))
    if not p.is_dir():
        raise ModelLoadError(
            f"{p} is not a model: pass a directory with config.json or a .gguf file"
        )
    if (p / "config.json").exists():
        return p
    snapshots = p / "snapshots"
    if snapshots.is_dir():
        ref = p / "refs" / "main"
        if ref.exists() and (snapshots / ref.read_text().strip() / "config.json").exists():
            return snapshots / ref.read_text().strip()
        found = sorted(s for s in snapshots.iterdir() if (s / "config.json").exists())
        if found:
            return found[-1]
    raise ModelLoadError(
        f"{p}: no config.json here (nor in a Hugging Face cache snapshot), nor a .gguf file"
    )


def default_dtype() -> torch.dtype:
    """bf16 where the CPU has native bf16 matmul (AVX512-BF16 / AMX), else fp32."""
    if torch.cuda.is_available():
        return torch.bfloat16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return torch.float32
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype()
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise ModelLoadError(f"dtype {dtype} is not supported; choose fp32, bf16 or fp16")
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not supported; choose fp32, bf16 or fp16")
    return DTYPES[dtype]


def load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"{index}: not a safetensors index ({e})") from None
        files = [model_dir / f for f in sorted(set(weight_map.values()))]
    else:
        raise ModelLoadError(
            f"{model_dir}: no model.safetensors or model.safetensors.index.json "
            "(braid reads safetensors weights only)"
        )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.exists():
            raise ModelLoadError(f"{f}: listed in the safetensors index but missing")
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"{f}: corrupt or unreadable safetensors file ({e})") from None
    return state


def _take(state: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], dtype: torch.dtype):
    if name not in state:
        raise ModelLoadError(f"weights: missing tensor {name!r}")
    t = state.pop(name)
    if tuple(t.shape) != shape:
        raise ModelLoadError(
            f"weights: {name!r} has shape {tuple(t.shape)}, config.json implies {shape}"
        )
    return t.to(dtype).contiguous()


def build_transformer(
    config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype
) -> Transformer:
    c = config
    d, q, kv, ffn = c.hidden_size, c.q_size, c.kv_size, c.intermediate_size
    state = {k.removeprefix("model."): v for k, v in state.items()}  # HF nests under "model."
    embed = _take(state, "embed_tokens.weight", (c.vocab_size, d), dtype)
    layers = []
    for i in range(c.num_layers):
        p = f"layers.{i}."
        a = p + "self_attn."

        def take(name: str, shape: tuple[int, ...], _p: str = a) -> torch.Tensor:
            return _take(state, _p + name, shape, dtype)

        bias = None
        if c.attention_bias:
            bias = torch.cat(
                [take("q_proj.bias", (q,)), take("k_proj.bias", (kv,)), take("v_proj.bias", (kv,))]
            )
        layers.append(
            LayerWeights(
                input_norm=_take(state, p + "input_layernorm.weight", (d,), dtype),
                qkv=Linear(
                    torch.cat(
                        [
                            take("q_proj.weight", (q, d)),
                            take("k_proj.weight", (kv, d)),
                            take("v_proj.weight", (kv, d)),
                        ]
                    ),
                    bias,
                ),
                q_norm=take("q_norm.weight", (c.head_dim,)) if c.qk_norm else None,
                k_norm=take("k_norm.weight", (c.head_dim,)) if c.qk_norm else None,
                o=Linear(take("o_proj.weight", (d, q))),
                post_norm=_take(state, p + "post_attention_layernorm.weight", (d,), dtype),
                gate_up=Linear(
                    torch.cat(
                        [
                            _take(state, p + "mlp.gate_proj.weight", (ffn, d), dtype),
                            _take(state, p + "mlp.up_proj.weight", (ffn, d), dtype),
                        ]
                    )
                ),
                down=Linear(_take(state, p + "mlp.down_proj.weight", (d, ffn), dtype)),
            )
        )
    norm = _take(state, "norm.weight", (d,), torch.float32)
    if "lm_head.weight" in state:
        lm_head = _take(state, "lm_head.weight", (c.vocab_size, d), torch.float32)
    elif c.tie_word_embeddings:
        lm_head = embed.float()
    else:
        raise ModelLoadError("weights: missing 'lm_head.weight' and tie_word_embeddings is false")
    # drop known non-parameters; anything else means the checkpoint is not what config.json says
    leftover = [k for k in state if "rotary_emb" not in k]
    if leftover:
        raise ModelLoadError(
            f"weights: unexpected tensors for {c.architecture} with {c.num_layers} layers: "
            f"{', '.join(sorted(leftover)[:5])}"
        )
    return Transformer(c, embed, layers, norm, lm_head, dtype)


def read_generation_config(model_dir: Path) -> dict:
    """generation_config.json as a dict ({} when absent): eos ids and sampling defaults."""
    path = model_dir / "generation_config.json"
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a JSON object ({e})") from None


def load_model(
    path: str | Path, dtype: str | torch.dtype | None = None
) -> tuple[Transformer, Path]:
    model_dir = resolve_model_dir(path, dtype)
    config = ModelConfig.from_file(model_dir / "config.json")
    eos = read_generation_config(model_dir).get("eos_token_id")
    if eos is not None:
        config = replace(config, eos_token_ids=(eos,) if isinstance(eos, int) else tuple(eos))
    state = load_state_dict(model_dir)
    return build_transformer(config, state, parse_dtype(dtype)), model_dir
