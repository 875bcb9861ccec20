"""Penalties on the rows a method scores: what each row has seen besides the request's output.

A verify row that scores draft position k has seen the prompt, the output and draft[:k]; a node
of a draft tree has seen the path to it. Every helper returns `logits` untouched (and builds
nothing) when no request has penalties, the common case.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from braid.sampling import apply_penalties

if TYPE_CHECKING:
    from braid.engine.request import Request


def penalise(
    logits: torch.Tensor, owners: Sequence[Request], seen: Sequence[Sequence[int]] | None = None
) -> torch.Tensor:
    """Row i belongs to owners[i] and follows its output, then the tokens seen[i]."""
    if not any(r.params.penalised for r in owners):
        return logits
    extra = seen if seen is not None else [()] * len(owners)
    histories = [
        (r.prompt_ids, r.output_ids + list(e)) if r.params.penalised else ((), ())
        for r, e in zip(owners, extra, strict=True)
    ]
    stops = [r.stop_ids for r in owners]
    return apply_penalties(logits, [r.params for r in owners], histories, stops)


def penalise_chains(
    logits: torch.Tensor, requests: Sequence[Request], drafts: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Verify rows of drafted chains: request i has len(drafts[i]) + 1 rows in a row, the j-th
    after draft[:j]."""
    if not any(r.params.penalised for r in requests):
        return logits
    owners, seen = [], []
    for r, draft in zip(requests, drafts, strict=True):
        owners += [r] * (len(draft) + 1)
        seen += [draft[:j] for j in range(len(draft) + 1)]
    return penalise(logits, owners, seen)


def penalise_trees(
    logits: torch.Tensor,
    requests: Sequence[Request],
    trees: Sequence[tuple[Sequence[int], Sequence[int]]],
) -> torch.Tensor:
    """Verify rows of drafted trees (tokens, parents; parents listed first): request i has
    len(tokens) + 1 rows, the first after the output, row 1 + n after the path to node n."""
    if not any(r.params.penalised for r in requests):
        return logits
    owners, seen = [], []
    for r, (tokens, parents) in zip(requests, trees, strict=True):
        paths: list[list[int]] = [[]]
        for tok, par in zip(tokens, parents, strict=True):
            paths.append(paths[par + 1] + [tok])
        owners += [r] * len(paths)
        seen += paths
    return penalise(logits, owners, seen)
