"""The joint loss of the CP heads and the load-balancing term.

Joint NLL of the next n tokens, in log space (no product of probabilities ever underflows):

    L_joint = -log Σ_α w_α Π_s P_α^(s)(x_{t+s}) = -logsumexp_α(log w_α + Σ_s log P_α^(s)(x_{t+s}))

Load balancing (Switch Transformer style, Fedus et al. 2021, the MoE balancing the paper borrows):

    L_bal = r · Σ_α f_α · P̄_α

where P̄_α is the mean mixture weight of expert α over the batch (differentiable) and f_α the
share of positions whose largest weight is α (a count, no gradient). It is 1 when the experts
are used evenly and approaches r when one expert takes every position, so its gradient lowers
the weight of over-used experts. The training objective is L_joint + λ · L_bal.
"""

from __future__ import annotations

import torch


def joint_nll(log_weights: torch.Tensor, target_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-position joint NLL [N] from log w [N, r] and log P_α^(s)(x_{t+s}) [N, n, r]."""
    return -torch.logsumexp(log_weights + target_log_probs.sum(dim=1), dim=-1)


def gather_targets(factor_log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log P_α^(s)(x_{t+s}) [N, n, r] from log P [N, n, r, V] and targets [N, n]."""
    r = factor_log_probs.shape[2]
    index = targets[:, :, None, None].expand(-1, -1, r, 1)
    return factor_log_probs.gather(-1, index).squeeze(-1)


def load_balance(log_weights: torch.Tensor) -> torch.Tensor:
    """r · Σ_α f_α · P̄_α over a batch of log weights [N, r] (1 when balanced)."""
    weights = log_weights.exp()
    r = weights.shape[-1]
    counts = torch.bincount(weights.argmax(-1), minlength=r).to(weights.dtype)
    share = counts / weights.shape[0]
    return r * (share * weights.mean(0)).sum()
