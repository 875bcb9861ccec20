"""Load a Hugging Face-format model directory into braid's `Transformer`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from braid.device import HOST, resolve_device
from braid.errors import ModelLoadError
from braid.model.config import ModelConfig
from braid.model.linear import Linear, Stacked
from braid.model.quant import (
    KERNEL_DTYPE,
    QuantLinear,
    QuantWeight,
    cat_rows,
    quantize_int4,
    quantize_int8,
)
from braid.model.transformer import LayerWeights, Transformer

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


# config.json key of a checkpoint without its embeddings (a draft that borrows its target's)
SHARED_EMBEDDINGS_KEY = "braid_shared_embeddings"

# --weights: how the matrices are stored while the model runs
WEIGHTS = ("auto", "bf16", "fp32", "int8", "int4")


def resolve_weights(
    weights: str | None,
    dtype: str | torch.dtype | None,
    gguf: bool,
    device: torch.device | None = None,
) -> tuple[torch.dtype, str | None]:
    """(activation dtype, quantization) for a `weights` / `dtype` pair.

    Quantization is None (dense weights in the dtype), "file" (a GGUF's own integers where the
    int kernels take them, model/gguf_weights.py), "int8" or "int4". `auto` keeps a GGUF file's
    precision, unless a dtype is given: an explicit dtype means dequantized weights, so parity
    checks against `transformers` read the same numbers."""
    explicit = dtype is not None and dtype != "auto"
    if weights is None or weights == "auto":
        if explicit or not gguf:
            return parse_dtype(dtype, device), None
        return KERNEL_DTYPE, "file"
    if weights in ("bf16", "fp32"):
        want = DTYPES[weights]
        if explicit and parse_dtype(dtype) != want:
            raise ModelLoadError(f"weights {weights!r} and dtype {dtype!r} disagree; give one")
        return want, None
    if weights in ("int8", "int4"):
        if explicit and parse_dtype(dtype) != KERNEL_DTYPE:
            raise ModelLoadError(
                f"weights {weights!r} run with bf16 activations (torch's CPU int kernels); "
                f"drop dtype {dtype!r} or pass bf16"
            )
        return KERNEL_DTYPE, weights
    raise ModelLoadError(f"weights {weights!r} is not supported; choose {', '.join(WEIGHTS)}")


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


def resolve_model_dir(
    path: str | Path, dtype: str | torch.dtype | None = None, meta: bool = False
) -> Path:
    """A model directory; a Hugging Face cache entry (`models--org--name`) -> its snapshot; a
    GGUF file (or a directory holding one) -> its converted directory in the cache (`meta`: the
    one without weights, for a model whose weights are read from the GGUF itself)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"model {str(p)!r} does not exist")
    gguf = gguf_file(p)
    if gguf is not None:
        from braid.model.gguf_cache import cached_model_dir

        return cached_model_dir(gguf, None if meta else parse_dtype(dtype))
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


def default_dtype(device: torch.device | None = None) -> torch.dtype:
    """bf16 on a GPU and where the CPU has native bf16 matmul (AVX512-BF16 / AMX), else fp32.
    `device` None: the GPU when torch sees one, as `--device auto` picks."""
    if device is None and torch.cuda.is_available() or device is not None and device.type != "cpu":
        return torch.bfloat16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return torch.float32
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device | None = None) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
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


def _take(
    state: dict[str, torch.Tensor | QuantWeight],
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    quant: str | None = None,
    device: torch.device = HOST,
) -> torch.Tensor | QuantWeight:
    """The tensor `name`, checked, on `device`; a matrix comes quantized as `quant` asks ("int4" /
    "int8" quantize a dense one; a `QuantWeight` from a GGUF stays as it is).

    Off the CPU a quantized matrix is dequantized here, to dense weights in `dtype`: torch's
    int kernels used on the CPU (`_weight_int4pack_mm_for_cpu`, `_weight_int8pack_mm`) have
    CUDA cousins (`_weight_int4pack_mm`, sm80+) whose packing layout has changed between torch
    releases, and none of them has run on a GPU here, so the GPU gets the plain bf16 matmul on
    the same values (the quantized model's weights, rounded to `dtype`)."""
    if name not in state:
        raise ModelLoadError(f"weights: missing tensor {name!r}")
    t = state.pop(name)
    if tuple(t.shape) != shape:
        raise ModelLoadError(
            f"weights: {name!r} has shape {tuple(t.shape)}, config.json implies {shape}"
        )
    if quant in ("int4", "int8") and len(shape) == 2 and not isinstance(t, QuantWeight):
        t = quantize_int4(t) if quant == "int4" else quantize_int8(t)
    if isinstance(t, QuantWeight):
        if device.type == "cpu":
            return t
        t = t.dequantize()
    return t.to(device=device, dtype=dtype).contiguous()


def _dense(t: torch.Tensor | QuantWeight, dtype: torch.dtype) -> torch.Tensor:
    return (t.dequantize() if isinstance(t, QuantWeight) else t).to(dtype).contiguous()


def make_linear(
    parts: list[torch.Tensor | QuantWeight], bias: torch.Tensor | None, dtype: torch.dtype
) -> Linear | QuantLinear | Stacked:
    """One linear over the rows of `parts` (a fused qkv or gate/up): dense, quantized, or, when
    the parts are of different kinds (a GGUF mixing Q4_1 and Q6_K), each on its own kernel."""
    if all(isinstance(w, torch.Tensor) for w in parts):
        return Linear(torch.cat(parts) if len(parts) > 1 else parts[0], bias)
    if all(isinstance(w, QuantWeight) for w in parts):
        joined = cat_rows(parts)
        if joined is not None:
            return QuantLinear(joined, bias)
    sizes = [w.shape[0] for w in parts]
    biases = [None] * len(parts) if bias is None else list(bias.split(sizes))
    return Stacked(
        [
            QuantLinear(w, b) if isinstance(w, QuantWeight) else Linear(w, b)
            for w, b in zip(parts, biases, strict=True)
        ]
    )


def build_transformer(
    config: ModelConfig,
    state: dict[str, torch.Tensor | QuantWeight],
    dtype: torch.dtype,
    quant: str | None = None,
    device: torch.device | str = HOST,
) -> Transformer:
    """The model from Hugging Face-named tensors on `device`: dense, or with its matrices
    quantized as `quant` says (`resolve_weights`); a `QuantWeight` in `state` is kept as it is
    on the CPU and dequantized elsewhere (`_take`)."""
    device = torch.device(device)
    c = config
    d, q, kv, ffn = c.hidden_size, c.q_size, c.kv_size, c.intermediate_size
    state = {k.removeprefix("model."): v for k, v in state.items()}  # HF nests under "model."
    embed_weight = _take(state, "embed_tokens.weight", (c.vocab_size, d), dtype, None, device)
    from_gguf_table = isinstance(embed_weight, QuantWeight)
    layers = []
    for i in range(c.num_layers):
        p = f"layers.{i}."

        def vector(name: str, size: int, _p: str = p) -> torch.Tensor:
            return _take(state, _p + name, (size,), dtype, None, device)

        def matrix(name: str, shape: tuple[int, int], _p: str = p) -> torch.Tensor | QuantWeight:
            return _take(state, _p + name, shape, dtype, quant, device)

        bias = None
        if c.attention_bias:
            bias = torch.cat(
                [
                    vector("self_attn.q_proj.bias", q),
                    vector("self_attn.k_proj.bias", kv),
                    vector("self_attn.v_proj.bias", kv),
                ]
            )
        qkv = [matrix(f"self_attn.{x}_proj.weight", (n, d)) for x, n in zip("qkv", (q, kv, kv))]
        layers.append(
            LayerWeights(
                input_norm=vector("input_layernorm.weight", d),
                qkv=make_linear(qkv, bias, dtype),
                q_norm=vector("self_attn.q_norm.weight", c.head_dim) if c.qk_norm else None,
                k_norm=vector("self_attn.k_norm.weight", c.head_dim) if c.qk_norm else None,
                o=make_linear([matrix("self_attn.o_proj.weight", (d, q))], None, dtype),
                post_norm=vector("post_attention_layernorm.weight", d),
                gate_up=make_linear(
                    [matrix(f"mlp.{x}_proj.weight", (ffn, d)) for x in ("gate", "up")], None, dtype
                ),
                down=make_linear([matrix("mlp.down_proj.weight", (d, ffn))], None, dtype),
            )
        )
    norm = _take(state, "norm.weight", (d,), torch.float32, None, device)
    head_dtype = torch.float32 if quant is None else dtype
    if "lm_head.weight" in state:
        lm_head = _take(state, "lm_head.weight", (c.vocab_size, d), head_dtype, quant, device)
    elif c.tie_word_embeddings:
        lm_head = embed_weight
        if quant in ("int4", "int8") and not isinstance(embed_weight, QuantWeight):
            quantize = quantize_int4 if quant == "int4" else quantize_int8
            lm_head = quantize(embed_weight)
            if device.type != "cpu":  # as `_take` does off the CPU: the quantized values, dense
                lm_head = lm_head.dequantize().to(device=device, dtype=dtype)
    else:
        raise ModelLoadError("weights: missing 'lm_head.weight' and tie_word_embeddings is false")
    if isinstance(lm_head, torch.Tensor):
        lm_head = lm_head.float()
    # drop known non-parameters; anything else means the checkpoint is not what config.json says
    leftover = [k for k in state if "rotary_emb" not in k]
    if leftover:
        raise ModelLoadError(
            f"weights: unexpected tensors for {c.architecture} with {c.num_layers} layers: "
            f"{', '.join(sorted(leftover)[:5])}"
        )
    # the embedding is gathered a few rows a step: a GGUF's quantized table stays as it is
    # (its rows are expanded when gathered), one quantized at load keeps its dense values
    embed = embed_weight if from_gguf_table else _dense(embed_weight, dtype)
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
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    weights: str | None = None,
    shared: dict[str, torch.Tensor | QuantWeight] | None = None,
    adapter: str | Path | None = None,
    device: str | torch.device | None = HOST,
) -> tuple[Transformer, Path]:
    """The model at `path` on `device` (braid.device.resolve_device; None = auto) and its
    directory; `weights` as `resolve_weights` reads it.

    shared: tensors the checkpoint does not store, by Hugging Face name, taken as they are (a
    draft's borrowed embeddings, `methods/draft.py`); a stored tensor of the same name wins.
    adapter: a peft LoRA directory merged into the dense weights first (`braid.model.adapter`);
    a GGUF then runs dequantized unless `weights` asks for int8/int4 quantized at load."""
    device = resolve_device(device)
    p = Path(path).expanduser()
    gguf = gguf_file(p) if p.exists() else None
    compute, quant = resolve_weights(weights, dtype, gguf is not None, device)
    from_file = gguf is not None and quant is not None  # the GGUF's own integers
    if adapter is not None and from_file:
        if weights not in (None, "auto"):
            raise ModelLoadError(
                f"--weights {weights} keeps the GGUF file's integers, which an adapter cannot "
                "be merged into: use --weights auto, bf16 or fp32 with --adapter"
            )
        quant, from_file = None, False
    model_dir = resolve_model_dir(p, compute, meta=from_file)
    config = ModelConfig.from_file(model_dir / "config.json")
    eos = read_generation_config(model_dir).get("eos_token_id")
    if eos is not None:
        config = replace(config, eos_token_ids=(eos,) if isinstance(eos, int) else tuple(eos))
    if from_file:
        from braid.model.gguf_weights import cached_gguf_weights

        state = cached_gguf_weights(gguf, model_dir, quant)
    else:
        state = load_state_dict(model_dir)
    if adapter is not None:
        from braid.model.adapter import merge_adapter

        state, vocab = merge_adapter(state, adapter, config.tie_word_embeddings)
        config = replace(config, vocab_size=vocab)
    if shared:
        state = dict(shared) | state
    elif SHARED_EMBEDDINGS_KEY in config.raw:
        raise ModelLoadError(
            f"{model_dir}: a draft that borrows its target's embeddings; load it as a draft "
            "(LLM(target, draft=DIR), --draft DIR), not as a model"
        )
    return build_transformer(config, state, compute, quant, device), model_dir
