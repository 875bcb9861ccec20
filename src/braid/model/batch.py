"""One model pass over new tokens of several requests: flat token layout plus attention masks.

Linear layers see the new tokens of all requests flattened (`[N, hidden]`, no padding);
attention sees them padded to `[B, Q, ...]` with a mask derived from each request's token graph.
Everything is built on the host, where the graphs live, and copied to the pool's device once per
pass (a few small copies, no synchronisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from braid.cache import ROOT, KVPool, TokenGraph
from braid.device import HOST


@dataclass
class Append:
    """New tokens for one request: ids, their positions and the segment each goes to."""

    graph: TokenGraph
    token_ids: Sequence[int] | torch.Tensor
    positions: Sequence[int] | torch.Tensor
    segments: Sequence[int] | torch.Tensor | int = 0


def tree_append(
    graph: TokenGraph, pending: Sequence[int], tokens: Sequence[int], parents: Sequence[int]
) -> Append:
    """Pending tokens on the trunk, then a draft tree: node i (`tokens[i]`) in a new segment
    forked off its parent's (`parents[i]`, -1 for the trunk; parents come first), at the
    position after its parent. A request's cache holds the whole tree for one verify pass."""
    base = graph.length + len(pending)
    segs: list[int] = []
    depth: list[int] = []
    for par in parents:
        segs.append(graph.fork(segs[par] if par >= 0 else ROOT, 1)[0])
        depth.append(1 if par < 0 else depth[par] + 1)
    positions = list(range(graph.length, base)) + [base + d - 1 for d in depth]
    return Append(graph, [*pending, *tokens], positions, [ROOT] * len(pending) + segs)


@dataclass
class ForwardBatch:
    pool: KVPool
    token_ids: torch.Tensor  # [N]
    positions: torch.Tensor  # [N]
    slots: torch.Tensor  # [N] pool slot of each new token
    rows: torch.Tensor  # [N] cache row each new token is written to
    batch_slots: torch.Tensor | slice  # [B] slots of the requests (a slice when contiguous)
    pad_index: torch.Tensor | None  # [N] flat index into [B * Q]; None when already dense
    num_requests: int
    max_new: int  # Q
    keys: int  # T
    masks: dict[int | None, torch.Tensor | None]  # window -> bool [B, 1, Q, T]; None: all True
    offsets: list[int]  # start of each request's tokens in the flat layout
    max_position: int = -1  # the largest of `positions`, known without reading the device


def build_batch(appends: Sequence[Append], windows: Sequence[int | None] = (None,)) -> ForwardBatch:
    """Append the new tokens to their graphs and derive everything a model pass needs."""
    if not appends:
        raise ValueError("empty batch")
    pool = appends[0].graph.pool
    ids, pos, slots, rows, offsets, lens = [], [], [], [], [], []
    starts = []
    n = 0
    for a in appends:
        t = torch.as_tensor(a.token_ids, dtype=torch.long, device=HOST).reshape(-1)
        p = torch.as_tensor(a.positions, dtype=torch.long, device=HOST).reshape(-1)
        if t.numel() == 0 or p.numel() != t.numel():
            raise ValueError("each request needs >= 1 new token and one position per token")
        s = a.segments
        seg = (
            torch.full_like(t, s)
            if isinstance(s, int)
            else torch.as_tensor(s, dtype=torch.long, device=HOST)
        )
        start = a.graph.append(p, seg)
        ids.append(t)
        pos.append(p)
        slots.append(torch.full_like(t, a.graph.slot))
        rows.append(torch.arange(start, start + t.numel(), device=HOST))
        offsets.append(n)
        starts.append(start)
        lens.append(t.numel())
        n += t.numel()
    b, q = len(appends), max(lens)
    keys = max(a.graph.length for a in appends)
    slot_list = [a.graph.slot for a in appends]
    contiguous = slot_list == list(range(slot_list[0], slot_list[0] + b))
    batch_slots: torch.Tensor | slice = (
        slice(slot_list[0], slot_list[0] + b)
        if contiguous
        else torch.tensor(slot_list, device=pool.device)
    )
    dense = all(m == q for m in lens)
    pad_index = None
    if not dense:
        index = [torch.arange(m, device=HOST) + i * q for i, m in enumerate(lens)]
        pad_index = torch.cat(index).to(pool.device)
    masks = {}
    for window in set(windows):
        mask = torch.zeros((b, 1, q, keys), dtype=torch.bool, device=HOST)
        for i, a in enumerate(appends):
            r = torch.arange(starts[i], starts[i] + lens[i], device=HOST)
            mask[i, 0, : lens[i]] = a.graph.visibility(r, keys, window)
            mask[i, 0, lens[i] :, 0] = True  # padding queries look at one key: no NaN rows
        # every query sees every key (a decoding step of one request): attention needs no mask
        masks[window] = None if bool(mask.all()) else mask.to(pool.device)
    positions = torch.cat(pos)
    return ForwardBatch(
        pool=pool,
        token_ids=torch.cat(ids).to(pool.device),
        positions=positions.to(pool.device),
        slots=torch.cat(slots).to(pool.device),
        rows=torch.cat(rows).to(pool.device),
        batch_slots=batch_slots,
        pad_index=pad_index,
        num_requests=b,
        max_new=q,
        keys=keys,
        masks=masks,
        offsets=offsets,
        max_position=int(positions.max()),
    )
