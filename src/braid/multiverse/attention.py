"""Multiverse attention for training: position ids and the attention mask of tagged sequences.

Public API:

- `multiverse_layout(input_ids, tags) -> (positions LongTensor[T], visible BoolTensor[T, T])`
  for one sequence (a list of ints or a 1-D tensor); `visible[q, k]` says whether query token q
  attends to key token k.
- `multiverse_attention_inputs(input_ids [B, T], tags, attention_mask=None, dtype=float32)
  -> (position_ids LongTensor[B, T], mask [B, 1, T, T])`: what a `transformers` 5.x model takes
  as `position_ids` and `attention_mask`. The mask is additive and float (0 where visible,
  `torch.finfo(dtype).min` elsewhere): `transformers` uses a 4-D mask as given, and the eager
  implementation adds it to the scores, so a bool mask would be wrong there. `attention_mask`
  (1 = token, 0 = padding; left, right or anywhere) removes padding before the layout: real
  tokens get the layout of the unpadded sequence, padded keys are invisible, a padded query sees
  only itself (no NaN) and has position 0.
- `LayoutError(InvalidRequestError)`: malformed tag structure; `.index` is the token index.

`tags` is tag -> id, e.g. from `braid.multiverse.tags.tag_ids`; the ten structural tags are
needed (`<Think>`/`</Think>` play no part in attention and are ordinary tokens here).

Rules (DESIGN.md, "Multiverse facts"):

- Causal, except that sibling path spans (`<Path>` to `</Path>` inclusive, nested blocks
  included) cannot see each other. Everything after a block's `<Conclusion>` sees all of its
  paths.
- Each `<Path>` sits at position(`</Goal>`) + 1 and the path counts on from there; the
  `<Conclusion>` sits at max over sibling paths of position(`</Path>`) + 1, and everything after
  counts on from it. Blocks nested in a path and blocks in a row compose.
- Structure: `<Parallel>` at top level or inside a `<Path>`; then `<Goal>` (one or more
  `<Outline>`s), `</Goal>`, one `<Path>` per outline, `<Conclusion>`, `</Parallel>`. The path
  spans of a block must be contiguous: no token between `</Goal>` and `<Path>`, between `</Path>`
  and the next `<Path>` or `<Conclusion>` (tags absorb the whitespace around them, see
  `braid.multiverse.tags`). Text is allowed anywhere else.
- A sequence may end anywhere (a truncated example or a prefix): open paths are unfinished
  spans that reach the end, and no `<Conclusion>` is required.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from braid.errors import InvalidRequestError
from braid.multiverse.tags import (
    CONCLUSION,
    CONCLUSION_END,
    GOAL,
    GOAL_END,
    OUTLINE,
    OUTLINE_END,
    PARALLEL,
    PARALLEL_END,
    PATH,
    PATH_END,
)

_STRUCTURAL = (
    PARALLEL, PARALLEL_END, GOAL, GOAL_END, OUTLINE, OUTLINE_END,
    PATH, PATH_END, CONCLUSION, CONCLUSION_END,
)  # fmt: skip


class LayoutError(InvalidRequestError):
    """Malformed Multiverse structure in a token sequence, at token `index`."""

    def __init__(self, what: str, index: int, row: int | None = None):
        self.what, self.index, self.row = what, index, row
        where = f"token {index}" if row is None else f"row {row}, token {index}"
        super().__init__(f"{where}: {what}")


@dataclass
class _Frame:
    """An open tag; for `<Parallel>` also the block's bookkeeping."""

    tag: str
    start: int
    state: str = "start"  # <Parallel>: start -> goal -> paths -> conclusion -> done
    outlines: int = 0
    goal_end_pos: int = 0
    max_end_pos: int = 0
    next_path_at: int = 0  # the index the next <Path> or <Conclusion> must sit at
    spans: list[list[int]] = field(default_factory=list)  # [start, end] per path


def _tag_names(tags: dict[str, int]) -> dict[int, str]:
    missing = [t for t in _STRUCTURAL if t not in tags]
    if missing:
        raise InvalidRequestError(
            f"tags lacks {' '.join(missing)}; pass braid.multiverse.tags.tag_ids(tokenizer)"
        )
    return {int(tags[t]): t for t in _STRUCTURAL}


def multiverse_layout(
    input_ids: Sequence[int] | torch.Tensor, tags: dict[str, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [T] and visibility [T, T] (query, key) of one tagged sequence."""
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() != 1:
        raise InvalidRequestError(
            f"multiverse_layout takes one sequence (1-D), got shape {tuple(ids.shape)}; "
            "use multiverse_attention_inputs for a batch"
        )
    names = _tag_names(tags)
    T = ids.numel()
    stack: list[_Frame] = []
    blocks: list[_Frame] = []
    resets = [(0, 0)]  # (token index, its position): positions count on by one from each

    def pos_at(i: int) -> int:
        index, pos = resets[-1]
        return pos + i - index

    is_tag = torch.isin(ids, torch.tensor(list(names), dtype=torch.long))
    for i in is_tag.nonzero().flatten().tolist():
        tag = names[int(ids[i])]
        top = stack[-1] if stack else None
        inside = top.tag if top else "top level"

        def fail(what: str, i: int = i, tag: str = tag) -> LayoutError:
            return LayoutError(f"{tag} {what}", i)

        if top is not None and top.tag == PARALLEL and top.state == "paths":
            if i != top.next_path_at and tag in (PATH, CONCLUSION):
                raise LayoutError(
                    f"{i - top.next_path_at} token(s) between a block's {GOAL_END}/{PATH_END} "
                    f"and {tag}; path spans must be contiguous (add the tags with "
                    "braid.multiverse.tags so they absorb whitespace)",
                    top.next_path_at,
                )
        if tag == PARALLEL:
            if top is not None and top.tag != PATH:
                raise fail(f"inside {top.tag}: a block belongs at top level or in a {PATH}")
            stack.append(_Frame(PARALLEL, i))
            blocks.append(stack[-1])
        elif tag == GOAL:
            if top is None or top.tag != PARALLEL or top.state != "start":
                raise fail(f"at {inside}: a {GOAL} must come first in a {PARALLEL}")
            top.state = "goal"
            stack.append(_Frame(GOAL, i))
        elif tag == OUTLINE:
            if top is None or top.tag != GOAL:
                raise fail(f"at {inside}: outlines belong in a {GOAL}")
            stack[-2].outlines += 1
            stack.append(_Frame(OUTLINE, i))
        elif tag == GOAL_END:
            if top is None or top.tag != GOAL:
                raise fail(f"closes nothing (open: {inside})")
            stack.pop()
            block = stack[-1]
            if block.outlines == 0:
                raise fail(f"ends a {GOAL} with no {OUTLINE}")
            block.state, block.goal_end_pos, block.next_path_at = "paths", pos_at(i), i + 1
        elif tag == PATH:
            if top is None or top.tag != PARALLEL or top.state != "paths":
                raise fail(f"at {inside}: paths follow the {GOAL} of a {PARALLEL}")
            if len(top.spans) == top.outlines:
                n = len(top.spans) + 1
                raise fail(f"number {n}, but the {GOAL} has {top.outlines} outlines")
            resets.append((i, top.goal_end_pos + 1))
            top.spans.append([i, T - 1])
            stack.append(_Frame(PATH, i))
        elif tag == PATH_END:
            if top is None or top.tag != PATH:
                raise fail(f"closes nothing (open: {inside})")
            stack.pop()
            block = stack[-1]
            block.spans[-1][1] = i
            block.max_end_pos = max(block.max_end_pos, pos_at(i))
            block.next_path_at = i + 1
        elif tag == CONCLUSION:
            if top is None or top.tag != PARALLEL or top.state != "paths" or not top.spans:
                raise fail(f"at {inside}: a {CONCLUSION} follows the paths of a {PARALLEL}")
            if len(top.spans) != top.outlines:
                n = len(top.spans)
                raise fail(f"after {n} path(s), but the {GOAL} has {top.outlines} outlines")
            top.state = "conclusion"
            resets.append((i, top.max_end_pos + 1))
            stack.append(_Frame(CONCLUSION, i))
        elif tag == PARALLEL_END:
            if top is None:
                raise fail("closes nothing (no block is open)")
            if top.tag != PARALLEL:
                raise fail(f"while {top.tag} (token {top.start}) is still open")
            if top.state != "done":
                raise fail(f"before the block's {CONCLUSION}: a {PARALLEL} ends with one")
            stack.pop()
        else:  # OUTLINE_END, CONCLUSION_END
            opening = "<" + tag[2:]
            if top is None or top.tag != opening:
                raise fail(f"closes nothing (open: {inside})")
            stack.pop()
            if tag == CONCLUSION_END:
                stack[-1].state = "done"
    last = stack[-1] if stack else None  # a truncated sequence may not end between two paths
    if last and last.tag == PARALLEL and last.state == "paths" and last.next_path_at < T:
        raise LayoutError(
            f"the sequence ends with tokens after a {GOAL_END}/{PATH_END} that are in no path",
            last.next_path_at,
        )

    return _positions(resets, T), _visible(blocks, T)


def _positions(resets: list[tuple[int, int]], T: int) -> torch.Tensor:
    # positions = index + offset, the offset changing at each reset: a cumulative sum of jumps
    jumps = torch.zeros(T, dtype=torch.long)
    previous = 0
    for index, pos in resets:
        if index < T:
            jumps[index] += (pos - index) - previous
            previous = pos - index
    return torch.arange(T) + jumps.cumsum(0)


def _visible(blocks: list[_Frame], T: int) -> torch.Tensor:
    visible = torch.ones(T, T, dtype=torch.bool).tril_()
    for block in blocks:
        first = block.spans[0][0] if block.spans else 0
        for start, end in block.spans[1:]:
            # spans are contiguous, so the earlier siblings are exactly first..start-1
            visible[start : end + 1, first:start] = False
    return visible


def multiverse_attention_inputs(
    input_ids: Any,
    tags: dict[str, int],
    attention_mask: Any = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`position_ids` [B, T] and an additive float `attention_mask` [B, 1, T, T] for a batch."""
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() != 2:
        raise InvalidRequestError(f"input_ids must be [batch, tokens], got {tuple(ids.shape)}")
    B, T = ids.shape
    ids_cpu = ids.cpu()
    if attention_mask is None:
        real = torch.ones(B, T, dtype=torch.bool)
    else:
        real = torch.as_tensor(attention_mask).cpu().bool()
        if real.shape != ids.shape:
            raise InvalidRequestError(
                f"attention_mask has shape {tuple(real.shape)}, input_ids {tuple(ids.shape)}: "
                "they must match"
            )
    if not dtype.is_floating_point:
        raise InvalidRequestError(f"dtype must be a float dtype (the mask adds), got {dtype}")
    positions = torch.zeros(B, T, dtype=torch.long)
    visible = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        keep = real[b].nonzero().flatten()
        try:
            pos, vis = multiverse_layout(ids_cpu[b, keep], tags)
        except LayoutError as e:
            raise LayoutError(e.what, int(keep[e.index]), row=b) from None
        positions[b, keep] = pos
        if keep.numel() == T:
            visible[b] = vis
        else:
            visible[b, keep[:, None], keep[None, :]] = vis
        visible[b].diagonal()[~real[b]] = True  # a padded query sees itself: no NaN
    mask = torch.zeros(B, 1, T, T, dtype=dtype)
    mask.masked_fill_(~visible[:, None], torch.finfo(dtype).min)
    return positions.to(ids.device), mask.to(ids.device)
