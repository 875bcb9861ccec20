"""`braid info`: what a model directory holds, read from its config and safetensors headers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from braid.errors import ModelLoadError
from braid.model.config import ModelConfig
from braid.model.loader import resolve_model_dir


def describe(path: str | Path) -> dict[str, Any]:
    model_dir = resolve_model_dir(path)
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
    rope = config.rope.type + f" (theta {config.rope.theta:g})"
    info: dict[str, Any] = {
        "path": str(model_dir),
        "architecture": config.architecture,
        "parameters": params,
        "parameters_human": f"{params / 1e6:.1f}M",
        "dtype": ", ".join(sorted(dtypes)),
        "vocab_size": config.vocab_size,
        "context_length": config.max_position_embeddings,
        "layers": config.num_layers,
        "hidden_size": config.hidden_size,
        "heads": f"{config.num_heads} (kv {config.num_kv_heads}, head_dim {config.head_dim})",
        "rope": rope,
        "tied_embeddings": config.tie_word_embeddings,
        "weights_mb": round(size / 1e6, 1),
    }
    card = model_dir / "braid_card.json"
    if card.exists():
        info["card"] = json.loads(card.read_text())
    return info
