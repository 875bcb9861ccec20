"""Drafting from the mixture: marginals of the next position conditioned on the drafted tokens.

Given y_1..y_{s-1}, the joint's conditional for position s is q_s(x) = Σ_α π_α P_α^(s)(x) with
the posterior π_α ∝ w_α Π_{j<s} P_α^(j)(y_j) (Bayes on the mixture; the experts factorise).
The posterior is kept in log space; the marginal is one [r] x [r, V] product of probabilities.
"""

from __future__ import annotations

import torch


def condition(log_post: torch.Tensor, probs: torch.Tensor, token: int) -> torch.Tensor:
    """Posterior after observing `token` at a position: log π' ∝ log π + log P_α(token).

    log_post [r] (normalised), probs [r, V] of that position -> normalised [r]. If no expert
    gives the token any mass (fp32 underflow), the posterior stays as it was.
    """
    joint = log_post + torch.log(probs[:, token])
    total = torch.logsumexp(joint, dim=0)
    return joint - total if torch.isfinite(total) else log_post


def marginal(log_post: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """q(x) = Σ_α π_α P_α(x): [r], [r, V] -> [V]."""
    return log_post.exp().to(probs.dtype) @ probs


def conditional_marginals(
    log_weights: torch.Tensor, probs: torch.Tensor, tokens: list[int]
) -> torch.Tensor:
    """q_s(· | y_1..y_{s-1}) for s = 2..len(tokens)+1 given y = tokens: [len(tokens), V].

    log_weights [r], probs [n, r, V] (P_α^(s)); tokens[j] is y_{j+1} (y_1: the sampled token).
    """
    post = log_weights - torch.logsumexp(log_weights, dim=0)
    rows = []
    for j, y in enumerate(tokens):
        post = condition(post, probs[j], y)
        rows.append(marginal(post, probs[j + 1]))
    return torch.stack(rows)
