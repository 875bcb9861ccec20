"""Rotary position embeddings: frequencies (default and `llama3` scaling) and a cos/sin table."""

from __future__ import annotations

import math

import torch

from braid.device import HOST
from braid.model.config import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """The per-pair rotation frequencies, computed exactly as `transformers` does (fp32)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=HOST).float() / head_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.type == "llama3":
        old_len = rope.original_max_position_embeddings
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


class RopeTable:
    """cos/sin for every position up to a length that grows on demand, in the model dtype.

    Positions are looked up, never inferred from buffer order, so sibling branches of the token
    graph can reuse the same positions.
    """

    def __init__(
        self,
        rope: RopeConfig,
        head_dim: int,
        dtype: torch.dtype,
        length: int = 1024,
        device: torch.device | None = None,
    ):
        # frequencies computed on the host (as transformers does), the table on the device
        self.inv_freq = inverse_frequencies(rope, head_dim).to(device)
        self.dtype = dtype
        self._build(length)

    def _build(self, length: int) -> None:
        steps = torch.arange(length, dtype=torch.float32, device=self.inv_freq.device)
        freqs = steps[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = emb.cos().to(self.dtype)
        # rotate_half(x) * sin == roll(x, half) * [-sin, sin]: the sign lives in the table
        sin = emb.sin().to(self.dtype)
        half = sin.shape[-1] // 2
        self.sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    def lookup(
        self, positions: torch.Tensor, max_position: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin (see `apply_rope`), [N, 1, head_dim], for flat positions [N];
        `max_position` (their largest, when the caller knows it) saves a read of the device."""
        if max_position is None:
            max_position = int(positions.max()) if positions.numel() else -1
        need = max_position + 1
        if need > self.cos.shape[0]:
            self._build(max(need, 2 * self.cos.shape[0]))
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [N, heads, head_dim] by the half-split convention of Llama checkpoints.

    `sin` is the table's signed sin, so x * cos + roll(x) * sin is HF's
    x * cos + rotate_half(x) * sin op for op (negation is exact), in fewer kernels.
    """
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin
