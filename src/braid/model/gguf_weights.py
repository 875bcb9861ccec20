"""A GGUF file's weights kept quantized: its integers on braid's int4 / int8 linears.

Which weights stay quantized and how (`mode`):
- "file" (`--weights auto` on a GGUF): every Q4_0, Q4_1, Q4_K and Q8_0 matrix keeps its
  integers exactly (model/quant.py: Q4 on the int4 kernel, Q4_K's 6-bit sub-block scales folded
  into per-32 scales and zeros, Q8_0 as two exact int4 halves); other types (F16, BF16, F32,
  Q2_K, Q3_K, Q5_K, Q6_K, Q5_0/Q5_1) have no exact int-kernel mapping and run dequantized in
  bf16. The rule is exact-or-dense: nothing is re-quantized behind the user's back.
- "int4" / "int8": what `--weights` asks, for every matrix: exact where the file's integers map
  (Q4_x, Q8_0 onto int4), else re-quantized from the dequantized values (groups of 32 for int4,
  per output channel for int8).
Norms and biases stay dense. The embedding is gathered, not multiplied, so it is dequantized
once for the lookup; a tied output layer keeps the quantized copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from braid.errors import ModelLoadError
from braid.model.gguf import GGUFTensor, gguf_config, gguf_tensor_list, open_reader, unpermute_rows
from braid.model.quant import QuantWeight, from_gguf, quantize_int4, quantize_int8

EXACT_TYPES = (
    "Q4_0",
    "Q4_1",
    "Q8_0",
    "Q4_K",
)  # types whose integers the int kernels take unchanged
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


# -- the cache: reading a GGUF's metadata costs seconds of Python, its tensors none ----------
def cached_gguf_weights(
    path: Path, entry: Path, mode: str
) -> dict[str, torch.Tensor | QuantWeight]:
    """`gguf_weights`, kept in the file's cache entry (`entry`, from `cached_model_dir`) as
    `weights-<mode>.safetensors` after the first load; a read-only entry just skips the write."""
    from safetensors.torch import load_file, save_file

    file = entry / f"weights-{mode}.safetensors"
    if file.exists():
        try:
            return unflatten(load_file(str(file)))
        except Exception:  # a damaged entry: read the GGUF again and rewrite it
            pass
    state = gguf_weights(path, mode)
    head = state.get("lm_head.weight", state.get("model.embed_tokens.weight"))
    if isinstance(head, QuantWeight):
        head.row_norms()  # the logit head's bound: one pass over the vocabulary, kept
    tmp = entry / f".{file.name}.{os.getpid()}.tmp"
    try:
        save_file(flatten(state), str(tmp))
        tmp.replace(file)
    except OSError:
        tmp.unlink(missing_ok=True)
    return state


def flatten(state: dict[str, torch.Tensor | QuantWeight]) -> dict[str, torch.Tensor]:
    """Plain tensors for safetensors: a QuantWeight's 4-bit integers packed two per byte."""
    out = {}
    for name, w in state.items():
        if not isinstance(w, QuantWeight):
            out[name] = w.contiguous()
            continue
        if w.bits == 4:
            out[f"{name}::int4"] = (w.q[..., 0::2] | (w.q[..., 1::2] << 4)).contiguous()
            out[f"{name}::zeros"] = w.zeros.contiguous()
        else:
            out[f"{name}::int8"] = w.q.contiguous()
        out[f"{name}::scales"] = w.scales.contiguous()
        if w.norms is not None:
            out[f"{name}::norms"], out[f"{name}::part_norms"] = w.norms, w.part_norms
    return out


def unflatten(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | QuantWeight]:
    state: dict[str, torch.Tensor | QuantWeight] = {}
    for key, t in flat.items():
        name, _, part = key.partition("::")
        if not part:
            state[name] = t
        elif part in ("int4", "int8"):
            if part == "int4":
                q = torch.empty((*t.shape[:-1], 2 * t.shape[-1]), dtype=torch.uint8)
                torch.bitwise_and(t, 0x0F, out=q[..., 0::2])
                torch.bitwise_right_shift(t, 4, out=q[..., 1::2])
                zeros = flat[f"{name}::zeros"]
            else:
                q, zeros = t, None
            w = QuantWeight(int(part[3:]), q, flat[f"{name}::scales"], zeros)
            w.norms, w.part_norms = flat.get(f"{name}::norms"), flat.get(f"{name}::part_norms")
            state[name] = w
    return state
