"""`braid info`: what a model holds, read from its config and weight headers (nothing loaded)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from safetensors import safe_open

from braid.errors import ModelLoadError
from braid.model.config import ModelConfig
from braid.model.loader import gguf_file, resolve_model_dir


def describe(path: str | Path) -> dict[str, Any]:
    p = Path(path).expanduser()
    gguf = gguf_file(p) if p.exists() else None
    if gguf is not None:
        return _describe_gguf(gguf)
    model_dir = resolve_model_dir(p)
    config = ModelConfig.from_file(model_dir / "config.json")
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{model_dir}: no .safetensors weights")
    params, dtypes, size = 0, set(), 0
    for f in files:
        size += f.stat().st_size
        try:
            with safe_open(str(f), "pt") as st:
                for name in st.keys():
                    s = st.get_slice(name)
                    n = 1
                    for dim in s.get_shape():
                        n *= dim
                    params += n
                    dtypes.add(s.get_dtype())
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise ModelLoadError(f"{f}: corrupt or unreadable safetensors file ({e})") from None
    info = {"path": str(model_dir), "format": "safetensors", **_shape(config, params)}
    info.update(weights=", ".join(sorted(dtypes)), weights_mb=round(size / 1e6, 1))
    card = model_dir / "braid_card.json"
    if card.exists():
        info["card"] = json.loads(card.read_text())
    return info


def _describe_gguf(path: Path) -> dict[str, Any]:
    from gguf import GGMLQuantizationType

    from braid.model.gguf import field_value, gguf_config, open_reader

    reader = open_reader(path)
    cfg = gguf_config(reader, path)
    cfg["tie_word_embeddings"] = "output.weight" not in {t.name for t in reader.tensors}
    config = ModelConfig.from_dict(cfg, str(path))
    params = sum(int(t.n_elements) for t in reader.tensors)
    types = Counter(GGMLQuantizationType(t.tensor_type).name for t in reader.tensors)
    info = {"path": str(path), "format": "gguf", **_shape(config, params)}
    info["name"] = field_value(reader, "general.name")
    info["weights"] = ", ".join(f"{name} x{n}" for name, n in types.most_common())
    info["weights_mb"] = round(path.stat().st_size / 1e6, 1)
    info["runs_as"] = _runs_as(types)
    info["license"] = field_value(reader, "general.license")
    info["chat_template"] = field_value(reader, "tokenizer.chat_template") is not None
    return {k: v for k, v in info.items() if v is not None}


def _runs_as(types: Counter) -> str:
    """What `--weights auto` does with each of the file's types (model/gguf_weights.py)."""
    from braid.model.gguf_weights import EXACT_TYPES

    kept = {"Q4_0": "int4", "Q4_1": "int4", "Q4_K": "int4", "Q8_0": "2 x int4"}
    parts = []
    for name in types:
        if name in EXACT_TYPES:
            parts.append(f"{name} -> {kept[name]} kernel (same integers)")
        elif name not in ("F32",):
            parts.append(f"{name} -> bf16 (dequantized)")
    return "; ".join(parts) or "bf16"


def _shape(config: ModelConfig, params: int) -> dict[str, Any]:
    return {
        "architecture": config.architecture,
        "parameters": params,
        "parameters_human": f"{params / 1e6:.1f}M",
        "vocab_size": config.vocab_size,
        "context_length": config.max_position_embeddings,
        "layers": config.num_layers,
        "hidden_size": config.hidden_size,
        "heads": f"{config.num_heads} (kv {config.num_kv_heads}, head_dim {config.head_dim})",
        "rope": f"{config.rope.type} (theta {config.rope.theta:g})",
        "tied_embeddings": config.tie_word_embeddings,
    }


def format_info(info: dict[str, Any], indent: int = 0) -> str:
    """Aligned `key  value` lines; nested dicts (a model card) indented below their key."""
    width = max(map(len, info))
    lines = []
    for key, value in info.items():
        if isinstance(value, dict) and value:
            lines.append(" " * indent + f"{key}:")
            lines.append(format_info(value, indent + 2))
        else:
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
            lines.append(" " * indent + f"{key:<{width}}  {text}")
    return "\n".join(lines)
