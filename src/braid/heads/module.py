"""CP multi-token heads (Basharin, Chertkov, Oseledets 2024): a rank-r mixture over n positions.

P(x_{t+1..t+n} | h_t) = Σ_α w_α(h_t) Π_s P_α^(s)(x_{t+s} | h_t), with w = softmax(gate(h_t)) and
P_α^(s) = softmax(E · proj_{s,α}(h_t)) where E is the base model's own unembedding (shared, not
part of the heads). h_t is the base model's final-normed hidden state, exactly the lm_head input.

Projections (`kind`): "residual" (h + U silu(D h), a bottleneck block; small enough to ship) or
"linear" (a full d x d matrix started at the identity). With `base_first`, position 1 reuses the
base model's next-token distribution for every expert (Gloeckle et al.'s first head); otherwise
each expert has its own position-1 factor, which lets the draft condition on the sampled token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

KINDS = ("residual", "linear")


@dataclass
class HeadsConfig:
    n: int  # tokens predicted per hidden state (positions t+1 .. t+n)
    rank: int  # r: experts in the mixture
    hidden_size: int
    vocab_size: int
    kind: str = "residual"
    bottleneck: int = 64  # residual kind: width of the block
    base_first: bool = False  # position 1 = the base model's distribution for every expert
    base_model: dict = field(default_factory=dict)  # what the heads were trained on
    val_loss: float | None = None  # joint validation NLL (nats per position), from training
    training: dict = field(default_factory=dict)  # how they were trained (command, steps...)
    tree: list = field(default_factory=list)  # draft tree template (braid.heads.tree), fitted
    tree_tokens: list = field(default_factory=list)  # [k]: validation tokens/pass, k + 1 nodes

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"n must be >= 2 (position 1 plus at least one draft), got {self.n}")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "residual" and self.bottleneck < 1:
            raise ValueError(f"bottleneck must be >= 1, got {self.bottleneck}")

    @property
    def own_positions(self) -> int:
        """Positions with their own projections (position 1 is the base's with base_first)."""
        return self.n - 1 if self.base_first else self.n

    def to_dict(self) -> dict:
        return asdict(self)


class CPHeads(nn.Module):
    """Mixture weights and per-(position, expert) projections; the unembedding is the caller's."""

    def __init__(self, config: HeadsConfig, seed: int = 0):
        super().__init__()
        self.config = c = config
        d, m, r = c.hidden_size, c.own_positions, c.rank
        gen = torch.Generator().manual_seed(seed)
        self._packed: tuple[torch.Tensor, torch.Tensor] | None = None  # see pack()
        self.gate = nn.Linear(d, r)
        nn.init.normal_(self.gate.weight, 0.0, 0.02, generator=gen)
        nn.init.zeros_(self.gate.bias)
        # small random perturbations break the symmetry between experts (all start near base)
        if c.kind == "residual":
            b = c.bottleneck
            self.down = nn.Parameter(torch.randn(m, r, d, b, generator=gen) / math.sqrt(d))
            self.up = nn.Parameter(torch.randn(m, r, b, d, generator=gen) * (0.02 / math.sqrt(b)))
        else:
            eye = torch.eye(d).expand(m, r, d, d)
            self.weight = nn.Parameter(eye + torch.randn(m, r, d, d, generator=gen) * 1e-3)

    def log_weights(self, hidden: torch.Tensor) -> torch.Tensor:
        """log w_α(h): [N, d] -> [N, r]."""
        return torch.log_softmax(self.gate(hidden).float(), dim=-1)

    def project(self, hidden: torch.Tensor, own: slice = slice(None)) -> torch.Tensor:
        """proj_{s,α}(h) for the own positions in `own`: [N, d] -> [N, m, r, d]."""
        if self._packed is not None and not torch.is_grad_enabled():
            return self._project_packed(hidden, own)
        if self.config.kind == "residual":
            down, up = self.down[own], self.up[own]
            inner = torch.nn.functional.silu(torch.einsum("nd,mrdb->nmrb", hidden, down))
            return hidden[:, None, None, :] + torch.einsum("nmrb,mrbd->nmrd", inner, up)
        return torch.einsum("nd,mred->nmre", hidden, self.weight[own])

    def pack(self) -> CPHeads:
        """Lay the residual weights out for decoding: one matmul down, one batched matmul up."""
        if self.config.kind == "residual":
            m, r, d, b = self.down.shape
            down = self.down.detach().permute(2, 0, 1, 3).reshape(d, m * r * b).contiguous()
            self._packed = (down, self.up.detach().reshape(m * r, b, d).contiguous())
        return self

    def _project_packed(self, hidden: torch.Tensor, own: slice) -> torch.Tensor:
        c = self.config
        m, r, b = c.own_positions, c.rank, c.bottleneck
        lo, hi, _ = own.indices(m)
        down, up = self._packed
        inner = torch.nn.functional.silu(hidden @ down[:, lo * r * b : hi * r * b])
        inner = inner.view(-1, (hi - lo) * r, b).transpose(0, 1)  # [m' r, N, b]
        out = torch.bmm(inner, up[lo * r : hi * r]).transpose(0, 1)  # [N, m' r, d]
        return hidden[:, None, None, :] + out.reshape(-1, hi - lo, r, c.hidden_size)

    def factor_logits(
        self,
        hidden: torch.Tensor,
        unembed: Callable[[torch.Tensor], torch.Tensor],
        positions: int | None = None,
        skip_first: bool = False,
    ) -> torch.Tensor:
        """Unnormalised log P_α^(s): [N, d] -> [N, positions, r, V] (fp32).

        `unembed` maps hidden states [M, d] to logits [M, V] (the base model's lm_head).
        Positions 1..`positions` (default n) come back, or 2..`positions` with `skip_first`
        (decoding needs position 1 only to condition a rank > 1 mixture on the sampled token).
        """
        c = self.config
        stop = c.n if positions is None else positions
        start = 1 if skip_first else 0
        n_rows, parts = hidden.shape[0], []
        if start == 0 and c.base_first:  # position 1 is the base model's for every expert
            base = unembed(hidden).float()
            parts.append(base[:, None, None, :].expand(n_rows, 1, c.rank, base.shape[-1]))
            start = 1
        shift = 1 if c.base_first else 0  # own projection index of position s is s - 1 - shift
        if stop > start:
            proj = self.project(hidden, slice(start - shift, stop - shift))
            logits = unembed(proj.reshape(-1, c.hidden_size)).float()
            parts.append(logits.view(n_rows, stop - start, c.rank, -1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def factor_log_probs(
        self,
        hidden: torch.Tensor,
        unembed: Callable[[torch.Tensor], torch.Tensor],
        positions: int | None = None,
        skip_first: bool = False,
        log: bool = True,
    ) -> torch.Tensor:
        """log P_α^(s)(x) for every token: [N, d] -> [N, positions, r, V] (fp32); the
        positions as in `factor_logits`. With `log=False` the probabilities themselves
        (decoding mixes them linearly)."""
        logits = self.factor_logits(hidden, unembed, positions, skip_first)
        return torch.log_softmax(logits, -1) if log else torch.softmax(logits, -1)
