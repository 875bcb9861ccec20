"""The token-graph KV cache.

Every decoding method appends tokens to a request's cache, sometimes on several branches at once,
and keeps some of them. So each cached token carries an explicit position and a *segment*;
segments form a DAG, and a token sees the tokens of the segments its own segment descends from
plus the earlier tokens of its own segment.

Storage: a `KVPool` holds, per layer, K and V as `[slots, kv_heads, capacity, head_dim]` on the
model's device; a graph's positions, segments and visibility matrix stay on the host
(braid/device.py says why). A
request owns one slot (its rows are in append order); forks and joins only change the graph's
visibility matrix and never copy K/V. Live slots are kept compact at the front of the pool (a
freed slot is refilled by moving the last one) so a batch of requests reads its keys as a view.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from braid.device import HOST

ROOT = 0  # segment id of the prompt


class KVPool:
    """Preallocated K/V for up to `max_slots` requests; capacity per slot grows by doubling."""

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        max_slots: int,
        max_capacity: int,
        capacity: int = 128,
        device: torch.device = HOST,
    ):
        self.device = torch.device(device)
        self.shape = (num_kv_heads, head_dim)
        self.dtype = dtype
        self.max_slots = max_slots
        self.max_capacity = max_capacity
        self.capacity = min(capacity, max_capacity)
        size = (max_slots, num_kv_heads, self.capacity, head_dim)
        self.k = [torch.zeros(size, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self.v = [torch.zeros(size, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self.owners: list[TokenGraph] = []  # owners[s] holds slot s; slots >= len are free
        self.allocations = 0
        self.releases = 0

    # -- accounting -------------------------------------------------------------------------
    @property
    def live_slots(self) -> int:
        return len(self.owners)

    def used_tokens(self) -> int:
        """K/V rows in use across all requests: forks add none, truncate and keep release."""
        return sum(g.length for g in self.owners)

    def bytes_per_token(self) -> int:
        heads, dim = self.shape
        return 2 * len(self.k) * heads * dim * self.k[0].element_size()

    # -- slots ------------------------------------------------------------------------------
    def new_graph(self) -> TokenGraph:
        if len(self.owners) >= self.max_slots:
            raise RuntimeError(f"KV pool is full ({self.max_slots} requests)")
        graph = TokenGraph(self, slot=len(self.owners))
        self.owners.append(graph)
        self.allocations += 1
        return graph

    def release(self, graph: TokenGraph) -> None:
        if (
            graph.slot is None
            or graph.slot >= len(self.owners)
            or self.owners[graph.slot] is not graph
        ):
            raise RuntimeError("token graph freed twice or not owned by this pool")
        slot, last = graph.slot, len(self.owners) - 1
        if slot != last:  # keep live slots compact: move the last request into the hole
            moved = self.owners[last]
            n = moved.length
            for t in self.k + self.v:
                t[slot, :, :n] = t[last, :, :n]
            moved.slot = slot
            self.owners[slot] = moved
        self.owners.pop()
        graph.slot = None
        self.releases += 1

    def reserve(self, rows: int) -> None:
        """Make room for `rows` rows in every slot (doubling), or raise past the model context."""
        if rows <= self.capacity:
            return
        if rows > self.max_capacity:
            raise RuntimeError(
                f"KV cache needs {rows} rows, more than the model's {self.max_capacity}"
            )
        new = self.capacity
        while new < rows:
            new *= 2
        new = min(new, self.max_capacity)
        for cache in (self.k, self.v):
            for i, t in enumerate(cache):
                grown = t.new_zeros((t.shape[0], t.shape[1], new, t.shape[3]))
                grown[:, :, : self.capacity] = t
                cache[i] = grown
        self.capacity = new


class TokenGraph:
    """One request's cached tokens: positions, segments, and which segments see which."""

    def __init__(self, pool: KVPool, slot: int):
        self.pool = pool
        self.slot: int | None = slot
        self.length = 0
        self.pos = torch.zeros(pool.capacity, dtype=torch.long, device=HOST)
        self.seg = torch.zeros(pool.capacity, dtype=torch.long, device=HOST)
        # sees[a, b]: segment a sees all of segment b (b is a strict ancestor of a)
        self.sees = torch.zeros((4, 4), dtype=torch.bool, device=HOST)
        self.parents: list[tuple[int, ...]] = [()]
        # segments with children; they take more tokens only while no descendant has any
        self.sealed: set[int] = set()

    @property
    def num_segments(self) -> int:
        return len(self.parents)

    @property
    def is_linear(self) -> bool:
        return len(self.parents) == 1

    # -- graph operations -------------------------------------------------------------------
    def _new_segment(self, parents: Sequence[int]) -> int:
        s = len(self.parents)
        if s >= self.sees.shape[0]:
            grown = torch.zeros((2 * s, 2 * s), dtype=torch.bool, device=HOST)
            grown[:s, :s] = self.sees[:s, :s]
            self.sees = grown
        missing = [p for p in parents if not 0 <= p < s]
        if missing:  # checked before anything changes: a refused join leaves the graph as it was
            raise ValueError(f"segment {missing[0]} does not exist")
        for p in parents:
            self.sees[s] |= self.sees[p]
            self.sees[s, p] = True
            self.sealed.add(p)
        self.parents.append(tuple(parents))
        return s

    def fork(self, segment: int, n: int) -> list[int]:
        """n child segments that each see `segment` and its ancestors, but not each other."""
        return [self._new_segment([segment]) for _ in range(n)]

    def join(self, segments: Sequence[int]) -> int:
        """A new segment that sees every given segment and all of their ancestors."""
        if not segments:
            raise ValueError("join needs at least one segment")
        return self._new_segment(list(segments))

    def append(self, positions: torch.Tensor, segments: torch.Tensor) -> int:
        """Reserve rows for new tokens (the model writes their K/V); returns the first row."""
        n = positions.numel()
        if self.slot is None:
            raise RuntimeError("append to a freed token graph")
        if self.sealed:
            self._check_parent_append(segments)
        if int(segments.max()) >= self.num_segments or int(segments.min()) < 0:
            raise ValueError("append to a segment that does not exist")
        start = self.length
        self.pool.reserve(start + n)
        if start + n > self.pos.shape[0]:
            size = max(start + n, 2 * self.pos.shape[0])
            self.pos = _grow(self.pos, size)
            self.seg = _grow(self.seg, size)
        self.pos[start : start + n] = positions
        self.seg[start : start + n] = segments
        self.length = start + n
        return start

    def _check_parent_append(self, segments: torch.Tensor) -> None:
        """A forked segment may still grow, e.g. pending tokens appended in the same pass as a
        draft tree under them, but only before any descendant token exists: a descendant sees
        all of its ancestors, so later growth would change what already-computed tokens see."""
        new = segments.tolist()
        for s in set(new) & self.sealed:
            descendants = self._descendants(s)
            # segment ids grow with creation: tokens newer than every descendant rule them out
            if self.length and int(self.seg[: self.length].max()) >= min(descendants):
                below = torch.tensor(descendants, device=HOST)
                if bool(torch.isin(self.seg[: self.length], below).any()):
                    raise ValueError(
                        f"cannot append to segment {s}: it was forked or joined and its "
                        "branches already hold tokens"
                    )
            last_own = max(i for i, x in enumerate(new) if x == s)
            first_below = next((i for i, x in enumerate(new) if x in descendants), None)
            if first_below is not None and last_own > first_below:
                raise ValueError(f"tokens of segment {s} must precede those of its branches")

    def _descendants(self, segment: int) -> list[int]:
        """Segments that descend from `segment` (created after it, so one pass in order)."""
        below = {segment}
        for i in range(segment + 1, self.num_segments):
            if any(p in below for p in self.parents[i]):
                below.add(i)
        below.discard(segment)
        return sorted(below)

    def copy_prefix(self, source: TokenGraph, rows: int) -> None:
        """Start this empty graph with a copy of `source`'s first `rows` rows (K/V, positions).

        How samples of one prompt share its prefill: they live in separate slots, so the rows
        are copied once per sample, not recomputed. Only root-segment rows can be copied, since
        this graph has no other segments; a refused copy leaves both graphs as they were.
        """
        if self.length or self.slot is None or source.slot is None or source.pool is not self.pool:
            raise ValueError("copy_prefix needs an empty live graph and a live one of its pool")
        source._check_root_prefix(rows)
        if rows > self.pos.shape[0]:
            self.pos, self.seg = _grow(self.pos, rows), _grow(self.seg, rows)
        for t in self.pool.k + self.pool.v:
            t[self.slot, :, :rows] = t[source.slot, :, :rows]
        self.pos[:rows] = source.pos[:rows]
        self.seg[:rows] = ROOT
        self.length = rows

    def restart(self, rows: int) -> None:
        """Keep only the first `rows` rows, root-segment ones, as a fresh linear graph: how a
        finished sample hands its slot and its prompt's rows to a sibling without a copy."""
        self._check_root_prefix(rows)
        self.truncate(rows)
        self.linearize()

    def _check_root_prefix(self, rows: int) -> None:
        if not 0 <= rows <= self.length or bool((self.seg[:rows] != ROOT).any()):
            raise ValueError(f"{rows} rows are not a root-segment prefix of the graph")

    def checkpoint(self) -> tuple:
        """What `rollback` needs to undo everything appended, forked or joined after now."""
        return self.length, len(self.parents), set(self.sealed)

    def rollback(self, mark: tuple) -> None:
        """Back to a `checkpoint`: later rows, segments and seals are forgotten. Rows below the
        mark are never moved by the operations in between (keep compacts only newer rows)."""
        length, segments, sealed = mark
        self.truncate(length)
        del self.parents[segments:]
        self.sees[segments:] = False
        self.sees[:, segments:] = False
        self.sealed = sealed

    def truncate(self, length: int) -> None:
        """Roll back to the first `length` rows."""
        if not 0 <= length <= self.length:
            raise ValueError(f"truncate to {length} of {self.length} rows")
        self.length = length

    def keep(self, rows: torch.Tensor | Sequence[int]) -> None:
        """Compact the cache to the given rows (ascending), e.g. an accepted root-to-leaf path."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=HOST)
        if rows.numel() and (int(rows.max()) >= self.length or bool((rows.diff() <= 0).any())):
            raise ValueError("keep needs ascending rows below the cache length")
        # rows already in place (a kept prefix) are not copied: a kept path moves a few rows
        moved = (rows != torch.arange(rows.numel(), device=HOST)).nonzero()
        first = int(moved[0]) if moved.numel() else rows.numel()
        self._compact(first, rows[first:])

    def keep_path(self, prefix: int, rows: Sequence[int]) -> None:
        """`keep` of the first `prefix` rows and then `rows` (ascending, from `prefix` on): a
        verified path through a draft tree, without building the prefix's row list."""
        rows = [int(r) for r in rows]
        bounds = [prefix - 1, *rows]
        if not 0 <= prefix <= self.length or any(b <= a for a, b in zip(bounds, rows)):
            raise ValueError("keep_path needs a prefix and then ascending rows after it")
        if rows and rows[-1] >= self.length:
            raise ValueError("keep_path needs rows below the cache length")
        skip = 0  # path rows already in place
        while skip < len(rows) and rows[skip] == prefix + skip:
            skip += 1
        self._compact(prefix + skip, torch.tensor(rows[skip:], dtype=torch.long, device=HOST))

    def _compact(self, first: int, src: torch.Tensor) -> None:
        """Rows `src` move to first, first + 1, ...; the cache ends after them."""
        n = first + src.numel()
        if src.numel():
            s, kv_src = self.slot, src.to(self.pool.device)  # one copy of the index, not per layer
            for t in self.pool.k + self.pool.v:
                t[s, :, first:n] = t[s, :, kv_src]
            self.pos[first:n] = self.pos[src].clone()
            self.seg[first:n] = self.seg[src].clone()
        self.length = n

    def linearize(self) -> None:
        """Forget the segment structure: every row joins the root segment, in row order.

        Only valid when the rows form one causal chain, e.g. after `keep` of a root-to-leaf path
        of a draft tree; the graph is then as if the path had been appended plainly.
        """
        self.seg[: self.length] = ROOT
        self.parents = [()]
        self.sealed = set()
        self.sees.zero_()

    def free(self) -> None:
        self.pool.release(self)

    # -- visibility -------------------------------------------------------------------------
    def visibility(self, rows: torch.Tensor, keys: int, window: int | None = None) -> torch.Tensor:
        """Boolean [len(rows), keys]: may the token at each row attend to key row k.

        One gather and a few comparisons, no loop over tokens.
        """
        own = min(keys, self.length)
        k = torch.arange(own, device=HOST)
        seg_q, seg_k = self.seg[rows], self.seg[:own]
        visible = (seg_q[:, None] == seg_k[None, :]) & (k[None, :] <= rows[:, None])
        if not self.is_linear:
            visible |= self.sees[seg_q][:, seg_k]
        if window is not None:
            visible &= (self.pos[rows][:, None] - self.pos[:own][None, :]) < window
        if own < keys:
            visible = torch.nn.functional.pad(visible, (0, keys - own))
        return visible


def _grow(t: torch.Tensor, size: int) -> torch.Tensor:
    grown = t.new_zeros(size)
    grown[: t.shape[0]] = t
    return grown
