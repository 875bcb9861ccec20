"""A GGUF file's weights kept quantized: its integers on braid's int4 / int8 linears.

Which weights stay quantized and how (`mode`):
- "file" (`--weights auto` on a GGUF): every Q4_0, Q4_1 and Q8_0 matrix keeps its integers
  exactly (model/quant.py: Q4 on the int4 kernel, Q8_0 as two exact int4 halves); other types
  (F16, BF16, F32, the K-quants, Q5_0/Q5_1) have no exact int-kernel mapping yet and run
  dequantized in bf16. The rule is exact-or-dense: nothing is re-quantized behind the user's back.
- "int4" / "int8": what `--weights` asks, for every matrix: exact where the file's integers map
  (Q4_x, Q8_0 onto int4), else re-quantized from the dequantized values (groups of 32 for int4,
  per output channel for int8).
Norms and biases stay dense. The embedding is gathered, not multiplied, so it is dequantized
once for the lookup; a tied output layer keeps the quantized copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from braid.errors import ModelLoadError
from braid.model.gguf import GGUFTensor, gguf_config, gguf_tensor_list, open_reader, unpermute_rows
from braid.model.quant import QuantWeight, from_gguf, quantize_int4, quantize_int8

EXACT_TYPES = ("Q4_0", "Q4_1", "Q8_0")  # types whose integers the int kernels take unchanged
MODES = ("file", "int4", "int8")
_MATRICES = ("proj.weight", "embed_tokens.weight", "lm_head.weight")


def gguf_weights(path: str | Path, mode: str) -> dict[str, torch.Tensor | QuantWeight]:
    """Hugging Face-named tensors: matrices as `QuantWeight` (or fp32 where `mode` keeps them
    dense), the rest fp32."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    path = Path(path)
    reader = open_reader(path)
    config: dict[str, Any] = gguf_config(reader, path)
    state: dict[str, torch.Tensor | QuantWeight] = {}
    for t in gguf_tensor_list(reader, path, config):
        try:
            state[t.name] = _weight(t, mode)
        except ModelLoadError as e:
            raise ModelLoadError(f"{path}: {e}") from None
    return state


def _weight(t: GGUFTensor, mode: str) -> torch.Tensor | QuantWeight:
    if len(t.shape) != 2 or not t.name.endswith(_MATRICES):
        return t.dequantize()
    if t.qtype in EXACT_TYPES and mode != "int8":
        raw = torch.from_numpy(np.ascontiguousarray(t.data).reshape(-1).view(np.uint8).copy())
        w = from_gguf(raw, t.qtype, t.shape)
        return w if t.row_heads is None else _take_rows(w, _unpermuted_order(t))
    if mode == "file":
        return t.dequantize()
    dense = t.dequantize()
    return quantize_int4(dense) if mode == "int4" else quantize_int8(dense)


def _unpermuted_order(t: GGUFTensor) -> torch.Tensor:
    return unpermute_rows(torch.arange(t.shape[0]), t.row_heads)


def _take_rows(w: QuantWeight, rows: torch.Tensor) -> QuantWeight:
    """The weight with its output rows reordered (llama q/k back in Hugging Face order)."""
    if w.bits == 8:
        return QuantWeight(8, w.q[rows], w.scales[rows], None, w.group)
    return QuantWeight(4, w.q[:, rows], w.scales[:, rows], w.zeros[:, rows], w.group)
