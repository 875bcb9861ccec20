"""A `peft` LoRA adapter directory merged into a checkpoint's weights at load time.

The adapter is read from its own files (adapter_config.json, adapter_model.safetensors), so
loading needs no peft: each targeted matrix becomes W + (lora_alpha / r) B A (rsLoRA:
lora_alpha / sqrt(r)), rows of peft's trainable tokens (`trainable_token_indices`, how a
fine-tune trains new tokens such as the Multiverse tags without saving the whole embedding)
replace the base rows, and `modules_to_save` tensors replace theirs. The embedding (and an
untied head) grows to the adapter's vocabulary when its tokens lie past the base's. Anything
else peft can express (DoRA, per-module rank or alpha patterns, other adapter types) is refused
with the reason, never merged approximately.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from braid.errors import ModelLoadError

PREFIX = "base_model.model."
EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"


def is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def read_adapter(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, adapter tensors) of a peft adapter directory, checked."""
    path = Path(path).expanduser()
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path}: not a peft adapter (no adapter_config.json)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{config_file}: not valid JSON ({e})") from None
    kind, bias = config.get("peft_type"), config.get("bias", "none")
    checks = [
        (f"peft_type {kind!r} (braid merges LORA)", kind != "LORA"),
        ("use_dora", config.get("use_dora")),
        ("rank_pattern", config.get("rank_pattern")),
        ("alpha_pattern", config.get("alpha_pattern")),
        ("fan_in_fan_out", config.get("fan_in_fan_out")),
        (f"bias {bias!r}", bias != "none"),
        ("lora_bias", config.get("lora_bias")),
    ]
    unsupported = [what for what, bad in checks if bad]
    if unsupported:
        raise ModelLoadError(f"{path}: braid cannot merge this adapter: {', '.join(unsupported)}")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"{path}: no adapter_model.safetensors (braid reads safetensors)")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{weights}: corrupt or unreadable ({e})") from None
    return config, tensors


def merge_adapter(
    state: dict[str, torch.Tensor], path: str | Path, tied: bool
) -> tuple[dict[str, torch.Tensor], int]:
    """`state` (Hugging Face names, dense tensors) with the adapter merged, and its vocabulary
    size. Merges in fp32 and keeps each tensor's dtype. `tied`: the head is the embedding."""
    config, tensors = read_adapter(path)
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    out = dict(state)
    done: set[str] = set()

    def base(name: str) -> str:
        key = name.removeprefix(PREFIX) + ".weight"
        if key not in out:
            raise ModelLoadError(f"{path}: the adapter targets {key}, which the model lacks")
        if not isinstance(out[key], torch.Tensor):
            raise ModelLoadError(f"{path}: {key} is quantized; load the model with dense weights")
        return key

    for name, a in tensors.items():
        if name.endswith(".lora_A.weight"):
            stem = name.removesuffix(".lora_A.weight")
            b = tensors.get(stem + ".lora_B.weight")
            if b is None:
                raise ModelLoadError(f"{path}: {name} has no lora_B")
            key = base(stem)
            w = out[key]
            out[key] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
            done |= {name, stem + ".lora_B.weight"}
    vocab = out[EMBED].shape[0]
    rows = _token_rows(config)
    resized = tensors.get(PREFIX + "model.embed_tokens.token_adapter.base_layer.weight")
    if resized is not None:
        vocab = max(vocab, resized.shape[0])
    for name, values in tensors.items():
        if name.endswith(".token_adapter.trainable_tokens_delta"):
            module = name.removeprefix(PREFIX).removesuffix(".token_adapter.trainable_tokens_delta")
            ids = rows.get(module.rsplit(".", 1)[-1])
            if ids is None or len(ids) != values.shape[0]:
                raise ModelLoadError(f"{path}: {name} does not match trainable_token_indices")
            vocab = max(vocab, max(ids) + 1)
    grown = set(range(out[EMBED].shape[0], vocab)) - {i for ids in rows.values() for i in ids}
    if grown:
        raise ModelLoadError(
            f"{path}: the adapter's vocabulary has {vocab} ids but trains no rows for "
            f"{len(grown)} of the new ones (e.g. {min(grown)}): list every new token in "
            "trainable_token_indices"
        )
    out = _grow(out, vocab, tied)
    for name, values in tensors.items():
        if name in done:
            continue
        if tied and name.startswith(PREFIX + "lm_head."):
            continue  # peft keeps a tied head's rows equal to the embedding's
        if name.endswith(".token_adapter.base_layer.weight"):  # a resized embedding, whole
            name = name.replace(".token_adapter.base_layer.weight", ".weight")
        if name.endswith(".token_adapter.trainable_tokens_delta"):
            module = name.removeprefix(PREFIX).removesuffix(".token_adapter.trainable_tokens_delta")
            key = base(module)
            ids = torch.tensor(rows[module.rsplit(".", 1)[-1]])
            out[key] = out[key].index_copy(0, ids, values.to(out[key].dtype))  # peft's merge
        elif name.startswith(PREFIX) and name.endswith(".weight"):  # modules_to_save
            key = base(name.removesuffix(".weight"))
            if out[key].shape != values.shape:
                shapes = f"{tuple(values.shape)}, not {tuple(out[key].shape)}"
                raise ModelLoadError(f"{path}: {name} has shape {shapes}")
            out[key] = values.to(out[key].dtype)
        else:
            raise ModelLoadError(f"{path}: braid does not know the adapter tensor {name}")
    return out, vocab


def _token_rows(config: dict) -> dict[str, list[int]]:
    """trainable_token_indices by module name (a bare list: the embedding, and a head tied
    to it)."""
    spec = config.get("trainable_token_indices") or {}
    if isinstance(spec, list):
        return {"embed_tokens": list(spec), "lm_head": list(spec)}
    return dict(spec)


def _grow(state: dict[str, torch.Tensor], vocab: int, tied: bool) -> dict[str, torch.Tensor]:
    """Embedding (and an untied head) padded with zero rows up to `vocab`; the adapter's own
    rows then overwrite every new one it trains."""
    keys = [EMBED] + ([] if tied or HEAD not in state else [HEAD])
    for key in keys:
        w = state[key]
        if w.shape[0] < vocab:
            state[key] = torch.cat([w, w.new_zeros(vocab - w.shape[0], w.shape[1])])
    return state
