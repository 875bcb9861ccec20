"""Acceptance rules: which drafted tokens stay, and the distribution of the token after them.

Every rule sees one request's draft y_1..y_γ, the draft's processed distributions Q[0..γ-1]
(Q[j] drew y_{j+1}) and the target's processed distributions P[0..γ] (P[j] follows y_1..y_j).
A rule returns a `Plan`: per-position thresholds h, how uniforms pick the number τ of kept
tokens from them, and for every possible τ the distribution the next token is drawn from.
Splitting the decision this way keeps the randomness in one tiny function, so the tests can
integrate the exact output distribution over the uniforms and compare it with the target's.

- `token_level`: speculative sampling (Leviathan et al. 2023; Chen et al. 2023). Exact.
- `block`: block verification (Sun et al. 2024). Exact, and accepts at least as many tokens as
  `token_level` in expectation.
- `joint_threshold`: MTAD's joint-likelihood test (Qin et al. 2024). Lossy by design: it has no
  residual resampling, so its output distribution is not the target's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def greedy_prefix(draft: list[int], logits: torch.Tensor) -> tuple[int, int]:
    """Every rule at temperature 0: keep the draft while it is the target's argmax.

    logits [len(draft) + 1, V] -> (τ, the argmax after the kept prefix)."""
    best = logits.argmax(-1).tolist()
    tau = next((i for i in range(len(draft)) if draft[i] != best[i]), len(draft))
    return tau, best[tau]


@dataclass
class Plan:
    thresholds: torch.Tensor  # [γ] h_1..h_γ
    residuals: torch.Tensor  # [γ + 1, V]: next-token distribution when τ tokens are kept
    keep: str  # "prefix": τ = first i with u_i >= h_i; "last": τ = last i with u_i < h_i

    def decide(self, uniforms: torch.Tensor) -> int:
        """τ, the number of drafted tokens kept, from one uniform per draft position."""
        h = self.thresholds
        if self.keep == "prefix":
            fails = (uniforms >= h).nonzero()
            return int(fails[0]) if fails.numel() else h.numel()
        passes = (uniforms < h).nonzero()  # strict: a uniform of exactly 0 never passes h = 0
        return int(passes[-1]) + 1 if passes.numel() else 0


def _normalised(weights: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """weights / sum, row-wise; rows with no mass (p == q up to rounding) fall back."""
    total = weights.sum(-1, keepdim=True)
    return torch.where(total > 0, weights / total.clamp_min(1e-30), fallback)


def _draft_ratios(draft: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    steps = torch.arange(draft.numel(), device=p.device)
    return p[steps, draft] / q[steps, draft]


def token_level(draft: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> Plan:
    """Accept y_i w.p. min(1, p/q); on the first rejection draw from norm(max(p - q, 0))."""
    gamma = draft.numel()
    thresholds = _draft_ratios(draft, q, p).clamp(max=1.0)
    residuals = p.clone()
    residuals[:gamma] = _normalised((p[:gamma] - q).clamp_min(0), p[:gamma])
    return Plan(thresholds, residuals, "prefix")


def block(draft: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> Plan:
    """Block verification: p_i = min(p_{i-1} p(y_i)/q(y_i), 1), h_i = m_i / (m_i + 1 - p_i)."""
    gamma = draft.numel()
    ratios = _draft_ratios(draft, q, p)
    weight = torch.ones(gamma + 1, dtype=p.dtype, device=p.device)  # p_0 .. p_γ
    for i in range(gamma):
        weight[i + 1] = torch.clamp(weight[i] * ratios[i], max=1.0)
    excess = (weight[:gamma, None] * p[:gamma] - q).clamp_min(0)  # row i: max(p_i P_i - Q_i, 0)
    m = excess.sum(-1)
    thresholds = weight[1:].clone()  # h_γ = p_γ
    if gamma > 1:
        m_i, p_i = m[1:gamma], weight[1:gamma]
        denom = m_i + 1 - p_i
        thresholds[: gamma - 1] = torch.where(denom > 0, m_i / denom.clamp_min(1e-30), 1.0)
    residuals = p.clone()
    residuals[:gamma] = _normalised(excess, p[:gamma])
    return Plan(thresholds, residuals, "last")


def joint_threshold(ratios: torch.Tensor, tau: float) -> int:
    """MTAD: L = the largest i with prod_{k<=i} p(y_k)/q(y_k) > tau (0 if none).

    `ratios` holds p(y_k)/q(y_k) per drafted token. The caller emits y_1..y_L and samples the
    next token from P[L]; there is no residual resampling.
    """
    joint = torch.cumprod(ratios.double(), 0)
    passing = (joint > tau).nonzero()
    return int(passing[-1]) + 1 if passing.numel() else 0
