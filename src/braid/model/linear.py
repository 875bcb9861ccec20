"""Linear layers with weights prepacked for the CPU's matmul library.

Decoding multiplies one or a few rows by each weight, so the step is bound by reading weights.
`F.linear` on a plain bf16 weight lets oneDNN repack the weight on every call, which reads it
about twice; packing once at load time (the same ops torch.compile's CPU freezing uses) roughly
halves the time of a bf16 decoding matmul on this kind of CPU. Elsewhere (CUDA, no oneDNN) the
plain weight is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class Linear:
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, pack: bool = True):
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        self.nbytes = weight.numel() * weight.element_size()
        if bias is not None:
            self.nbytes += bias.numel() * bias.element_size()
        self.bias = bias
        self.packed: torch.Tensor | None = None
        self.weight: torch.Tensor | None = weight
        if pack and weight.device.type == "cpu" and _packing_available():
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
                self.weight = None
            except RuntimeError:  # dtype or ISA not supported by this oneDNN build
                self.packed = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class Stacked:
    """Several linears over the same input, outputs side by side: a fused qkv or gate/up whose
    parts live on different kernels (a GGUF that mixes quantization types)."""

    def __init__(self, parts: list):
        self.parts = parts
        self.out_features = sum(p.out_features for p in parts)
        self.nbytes = sum(p.nbytes for p in parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = [p(x.to(p.dtype)) for p in self.parts]
        return torch.cat([o.to(outs[0].dtype) for o in outs], dim=-1)
