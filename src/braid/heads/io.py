"""Heads on disk: `heads.safetensors` (the weights) and `heads.json` (the HeadsConfig)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from braid.errors import ModelLoadError
from braid.heads.module import CPHeads, HeadsConfig
from braid.heads.tree import check_template

WEIGHTS, CONFIG = "heads.safetensors", "heads.json"
BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "heads"


def save_heads(heads: CPHeads, out: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the heads to `out/` (weights in `dtype`, bf16 by default: half the bytes)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in heads.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps(heads.config.to_dict(), indent=2) + "\n")
    return out


def load_heads(
    path: str | Path, hidden_size: int | None = None, vocab_size: int | None = None
) -> CPHeads:
    """Load heads (fp32) and check they fit a model with this hidden size and vocabulary."""
    path = Path(path).expanduser()
    if not (path / CONFIG).exists() or not (path / WEIGHTS).exists():
        raise ModelLoadError(
            f"{path}: no CP heads here (need {CONFIG} and {WEIGHTS}); train them with "
            "`braid train-heads --out DIR`"
        )
    try:
        config = HeadsConfig(**json.loads((path / CONFIG).read_text()))
        check_template(config.tree)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{path / CONFIG}: not a valid heads config ({e})") from None
    for what, theirs, ours in (
        ("hidden size", config.hidden_size, hidden_size),
        ("vocabulary size", config.vocab_size, vocab_size),
    ):
        if ours is not None and theirs != ours:
            raise ModelLoadError(
                f"{path}: heads were trained for a model with {what} {theirs}, this model has "
                f"{ours}; use heads trained on this model (braid train-heads --model DIR)"
            )
    heads = CPHeads(config)
    try:
        state = load_file(str(path / WEIGHTS))
        heads.load_state_dict({k: v.float() for k, v in state.items()})
    except (SafetensorError, RuntimeError, OSError) as e:
        raise ModelLoadError(f"{path / WEIGHTS}: cannot load the heads ({e})") from None
    return heads.eval().requires_grad_(False)
