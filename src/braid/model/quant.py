"""Weight-only int4 / int8 linears: quantized weights stay quantized, activations stay bf16.

Decoding reads every weight once per step, so the bytes of the weights set the step's time.
torch's CPU weight-only kernels read 4-bit weights in groups (`_weight_int4pack_mm_for_cpu`,
w = (q - 8) * scale + zero per group along the input) or 8-bit weights with one scale per output
row (`_weight_int8pack_mm`). GGUF's Q4_0 (w = d * (q - 8)) and Q4_1 (w = d * q + m) are 4-bit in
groups of 32 with the same integers per weight, so they map onto the int4 kernel exactly, scale
= d and zero = 0 (Q4_0) or m + 8 d (Q4_1). Q8_0 (w = d * q, groups of 32) fits neither kernel
as it is; it is split exactly into two 4-bit halves, q = 16 hi + lo, both on the int4 kernel:
the same bytes as int8, no requantization (see `split_int8_groups`).

The one rounding the mapping adds: the kernel keeps scales and zeros in the activation dtype
(bf16), where GGUF has fp16. `QuantWeight.dequantize` returns the weights the kernel actually
multiplies (scales and zeros rounded to bf16, the rest exact, in fp32): that is the model being
run, and the reference the tests hold the kernels to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# the activation dtype of the kernels: their fp32 paths are ~100x slower on this CPU
KERNEL_DTYPE = torch.bfloat16
GROUP = 32  # GGUF's block length for Q4_0 / Q4_1 / Q8_0


@dataclass
class QuantWeight:
    """A [N, K] weight as integers plus scales (`bits` 4: groups of `group` along K with a scale
    and a zero, w = (q - 8) * scale + zero, q in 0..15; `bits` 8: w = q * scale[row], q int8).

    `parts` > 1 means the weight is a sum of several 4-bit weights of the same shape (`q`,
    `scales` and `zeros` stacked along a leading axis): how Q8_0 runs on the int4 kernel."""

    bits: int
    q: torch.Tensor  # uint8 [P, N, K] (bits 4) or int8 [N, K] (bits 8)
    scales: torch.Tensor  # fp32 [P, N, K // group] (bits 4) or [N] (bits 8)
    zeros: torch.Tensor | None  # fp32 [P, N, K // group] (bits 4)
    group: int = GROUP
    # per-row 2-norms of the whole weight [N] and of each part [P, N] (the logit head's
    # rounding bound): computed once, and kept in the GGUF weight cache
    norms: torch.Tensor | None = None
    part_norms: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape[-2:])

    @property
    def parts(self) -> int:
        return self.q.shape[0] if self.bits == 4 else 1

    @property
    def nbytes(self) -> int:
        """Bytes the kernel reads: packed integers plus bf16 scales (and zeros)."""
        n, k = self.shape
        if self.bits == 8:
            return n * k + n * 2
        parts = self.q.shape[0]
        return parts * (n * k // 2 + 2 * 2 * n * (k // self.group))

    def dequantize(self) -> torch.Tensor:
        """fp32 [N, K]: the weights the kernel multiplies (scales and zeros as it keeps them)."""
        if self.bits == 8:
            return self.q.float() * self.scales.to(KERNEL_DTYPE).float()[:, None]
        s = self.scales.to(KERNEL_DTYPE).float().repeat_interleave(self.group, -1)
        z = self.zeros.to(KERNEL_DTYPE).float().repeat_interleave(self.group, -1)
        return ((self.q.float() - 8) * s + z).sum(0)

    def row_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(norms [N], part_norms [P, N]) of the rows of `dequantize()` and of each part's."""
        if self.norms is None:
            n = self.shape[0]
            parts, norms = [], torch.zeros(n)
            chunk = 4096  # a slab at a time: a 49k-row head is never dequantized whole
            for start in range(0, n, chunk):
                rows = torch.arange(start, min(start + chunk, n))
                if self.bits == 8:
                    w = self.rows(rows)
                    parts.append(w.norm(dim=1)[None])
                else:
                    each = self._part_rows(rows)
                    parts.append(each.norm(dim=2))
                    w = each.sum(0)
                norms[rows] = w.norm(dim=1)
            self.norms, self.part_norms = norms, torch.cat(parts, dim=1)
        return self.norms, self.part_norms

    def _part_rows(self, index: torch.Tensor) -> torch.Tensor:
        """fp32 [P, len(index), K]: each part's rows on its own."""
        parts, n = self.parts, len(index)
        q = self.q[:, index].view(parts, n, -1, self.group).float().sub_(8)
        s = self.scales[:, index].to(KERNEL_DTYPE).float()[..., None]
        z = self.zeros[:, index].to(KERNEL_DTYPE).float()[..., None]
        return torch.addcmul(z, q, s).view(parts, n, -1)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """fp32 rows `index` of `dequantize()`, without dequantizing the rest."""
        if self.bits == 8:
            return self.q[index].float() * self.scales[index].to(KERNEL_DTYPE).float()[:, None]
        return self._part_rows(index).sum(0)


def cat_rows(weights: list[QuantWeight]) -> QuantWeight | None:
    """Stack weights along N (a fused qkv or gate/up), or None when they differ in kind."""
    first = weights[0]
    kinds = {(w.bits, w.group, w.parts, w.shape[1]) for w in weights}
    if len(kinds) != 1:
        return None
    dim = -2 if first.bits == 4 else 0
    zeros = None if first.bits == 8 else torch.cat([w.zeros for w in weights], -2)
    return QuantWeight(
        first.bits,
        torch.cat([w.q for w in weights], dim),
        torch.cat([w.scales for w in weights], -2 if first.bits == 4 else 0),
        zeros,
        first.group,
    )


class QuantLinear:
    """y = x @ W.T (+ bias) on torch's weight-only kernels; x any float dtype, y fp32-castable
    bf16 (the kernels' output dtype is their activation dtype)."""

    def __init__(self, weight: QuantWeight, bias: torch.Tensor | None = None):
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        self.bits = weight.bits
        self.dtype = KERNEL_DTYPE
        self.bias = None if bias is None else bias.to(KERNEL_DTYPE)
        self.nbytes = weight.nbytes + (0 if bias is None else bias.numel() * 2)
        if weight.bits == 8:
            q = weight.q.contiguous()
            if q.data_ptr() % 64:  # the kernel's vector loads fault on a misaligned start, which
                q = q.clone()  # a tensor read from a safetensors file can have
            self.packed = [q]
            self.scales = [weight.scales.to(KERNEL_DTYPE)]
        else:
            pad = -self.out_features % 16  # the int4 packing takes N in multiples of 16
            self.padded = pad > 0
            self.packed = [
                torch._convert_weight_to_int4pack_for_cpu(_pad_rows(q, pad).to(torch.int32), 2)
                for q in weight.q
            ]
            # [K // group, N, 2]: the kernel's scales-and-zeros layout; padded rows are 0
            self.scales = [
                torch.stack([_pad_rows(s, pad).t(), _pad_rows(z, pad).t()], -1)
                .to(KERNEL_DTYPE)
                .contiguous()
                for s, z in zip(weight.scales, weight.zeros, strict=True)
            ]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != KERNEL_DTYPE:
            x = x.to(KERNEL_DTYPE)
        if self.bits == 8:
            y = torch._weight_int8pack_mm(x, self.packed[0], self.scales[0])
        else:
            g = self.weight.group
            y = torch._weight_int4pack_mm_for_cpu(x, self.packed[0], g, self.scales[0])
            for packed, sz in zip(self.packed[1:], self.scales[1:], strict=True):
                y = y + torch._weight_int4pack_mm_for_cpu(x, packed, g, sz)
            if self.padded:
                y = y[..., : self.out_features]
        return y if self.bias is None else y + self.bias


def _pad_rows(t: torch.Tensor, pad: int) -> torch.Tensor:
    return t if pad == 0 else torch.cat([t, t.new_zeros((pad, *t.shape[1:]))])


# -- from GGUF blocks ------------------------------------------------------------------------
def _blocks(raw: torch.Tensor, n: int, k: int, block_bytes: int) -> torch.Tensor:
    return raw.reshape(n, k // GROUP, block_bytes)


def _fp16(b: torch.Tensor) -> torch.Tensor:
    """Two little-endian bytes per block -> fp32 [N, K // 32]."""
    return b.contiguous().view(torch.float16).squeeze(-1).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """16 bytes per block -> 32 values: low nibbles are elements 0..15, high ones 16..31."""
    return torch.cat([qs & 0x0F, qs >> 4], -1)


def from_gguf(raw: torch.Tensor, qtype: str, shape: tuple[int, int]) -> QuantWeight:
    """A Q4_0 / Q4_1 / Q8_0 / Q4_K tensor's raw bytes (uint8) as a `QuantWeight` with the same
    integers."""
    n, k = shape
    if qtype == "Q4_0":  # [d fp16][16 bytes]: w = d * (q - 8)
        b = _blocks(raw, n, k, 18)
        d = _fp16(b[..., :2])
        q = _nibbles(b[..., 2:]).reshape(n, k)
        return QuantWeight(4, q[None], d[None], torch.zeros_like(d)[None])
    if qtype == "Q4_1":  # [d fp16][m fp16][16 bytes]: w = d * q + m
        b = _blocks(raw, n, k, 20)
        d, m = _fp16(b[..., :2]), _fp16(b[..., 2:4])
        q = _nibbles(b[..., 4:]).reshape(n, k)
        return QuantWeight(4, q[None], d[None], (m + 8 * d)[None])
    if qtype == "Q8_0":  # [d fp16][32 int8]: w = d * q
        b = _blocks(raw, n, k, 34)
        d = _fp16(b[..., :2])
        q = b[..., 2:].contiguous().view(torch.int8).reshape(n, k)
        return split_int8_groups(q, d)
    if qtype == "Q4_K":
        return _q4_k(raw, n, k)
    raise ValueError(f"no int kernel mapping for {qtype}")


def _q4_k(raw: torch.Tensor, n: int, k: int) -> QuantWeight:
    """Q4_K super-blocks of 256 (ggml-common.h block_q4_K: d, dmin fp16, 12 bytes of 6-bit
    sub-block scales and mins, 128 bytes of nibbles): 8 sub-blocks of 32 with
    w = d * sc * q - dmin * m, i.e. the int4 kernel's scale d * sc and zero 8 d sc - dmin m."""
    b = raw.reshape(n, k // 256, 144)
    d, dmin = _fp16(b[..., 0:2]), _fp16(b[..., 2:4])
    sm = b[..., 4:16].to(torch.int32)  # get_scale_min_k4, for the 8 sub-blocks at once
    lo4, hi4 = sm[..., 0:4], sm[..., 4:8]
    sc = torch.cat([lo4 & 63, (sm[..., 8:12] & 0x0F) | ((lo4 >> 6) << 4)], -1)
    m = torch.cat([hi4 & 63, (sm[..., 8:12] >> 4) | ((hi4 >> 6) << 4)], -1)
    # each 32-byte chunk: low nibbles are sub-block 2i, high nibbles sub-block 2i + 1
    qs = b[..., 16:].reshape(n, k // 256, 4, 32)
    q = torch.stack([qs & 0x0F, qs >> 4], 3).reshape(n, k)
    scale = (d[..., None] * sc).reshape(n, k // 32)
    zero = (8 * d[..., None] * sc - dmin[..., None] * m).reshape(n, k // 32)
    return QuantWeight(4, q[None], scale[None], zero[None])


def split_int8_groups(q: torch.Tensor, d: torch.Tensor) -> QuantWeight:
    """w = d * q (q int8 [N, K], d [N, K // 32]) as two exact 4-bit weights: q = 16 hi + lo with
    hi in -8..7 and lo in 0..15, so w = (hi' - 8) * 16 d + (lo - 8) * d + 8 d with hi' = hi + 8."""
    qi = q.to(torch.int16)
    hi, lo = torch.div(qi, 16, rounding_mode="floor"), qi % 16
    parts = torch.stack([hi + 8, lo]).to(torch.uint8)
    scales = torch.stack([16 * d, d])
    zeros = torch.stack([torch.zeros_like(d), 8 * d])
    return QuantWeight(4, parts, scales, zeros)


# -- from float weights (any checkpoint) -----------------------------------------------------
def quantize_int8(w: torch.Tensor) -> QuantWeight:
    """Symmetric per-output-channel int8 (absmax / 127), the int8 kernel's own layout."""
    w = w.float()
    scale = (w.abs().amax(1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    scale = scale.to(KERNEL_DTYPE).float()  # quantize against the scale the kernel will use
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return QuantWeight(8, q, scale, None)


def quantize_int4(w: torch.Tensor, group: int = GROUP) -> QuantWeight:
    """Asymmetric 4-bit in groups of `group` along K (min / max per group), as GGUF's Q4_1."""
    n, k = w.shape
    if k % group:
        raise ValueError(f"int4 needs the input size ({k}) to be a multiple of {group}")
    g = w.float().reshape(n, k // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float32).tiny)
    scale = scale.to(KERNEL_DTYPE).float()
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    zero = lo + 8 * scale  # (q - 8) * s + zero == q * s + lo
    return QuantWeight(4, q.reshape(n, k)[None], scale[None], zero[None], group)
