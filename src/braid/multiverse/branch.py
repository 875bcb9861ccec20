"""The per-request state of Multiverse decoding: branches (trunk, paths, continuations) and the
blocks they fork, in serialized order.

`flatten` gives the output token ids; `structural` the same with every tag the engine decoded
as text replaced by a plain token, i.e. the sequence whose training layout
(`braid.multiverse.attention.multiverse_layout`) the engine used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from braid.multiverse import tags as T
from braid.multiverse.structure import Structure

ACTIVE, WAITING, DONE = "active", "waiting", "done"


@dataclass(eq=False)
class Block:
    """One fork: the paths opened by a `</Goal>`, in outline order."""

    paths: list[Branch]


@dataclass(eq=False)
class Branch:
    """A chain of tokens in one request: the trunk, a path, or a path's continuation.

    `items` holds its token ids in order with each `Block` it forked at its place; flattening
    them (paths in outline order) gives the serialized output. `pending` tokens are sampled or
    forced but not yet in the cache; they go into the next pass at `pending_pos`.
    """

    segment: int
    next_pos: int
    label: str | None = None  # None for the trunk
    depth: int = 0  # blocks enclosing this branch
    state: str = ACTIVE
    items: list[int | Block] = field(default_factory=list)
    context: list[int] = field(default_factory=list)  # generated ids its next token sees
    pending: list[int] = field(default_factory=list)
    pending_pos: list[int] = field(default_factory=list)
    parent: Branch | None = None
    block: Block | None = None  # the block this path belongs to
    structure: Structure = field(init=False)  # its open tags, as the training layout reads them

    def __post_init__(self) -> None:
        self.structure = Structure(in_path=self.label is not None)

    def schedule(self, tokens: list[int]) -> None:
        """Add tokens to this branch's chain, in order, at its next positions."""
        self.items.extend(tokens)
        self.context.extend(tokens)
        self.pending.extend(tokens)
        self.pending_pos.extend(range(self.next_pos, self.next_pos + len(tokens)))
        self.next_pos += len(tokens)


def flatten(items: list[int | Block]) -> list[int]:
    out: list[int] = []
    for item in items:
        if isinstance(item, Block):
            for path in item.paths:
                out += flatten(path.items)
        else:
            out.append(item)
    return out


def structural(b: Branch, tags: dict[str, int], text: int | None, close: bool = False) -> list[int]:
    """`flatten(b.items)` with every tag the engine decoded as text replaced by `text` (kept
    when None): the sequence whose training layout the engine used. With `close`, paths a
    budget cut short are closed as training would close them, so the sequence is complete."""
    out: list[int] = []
    for i, item in enumerate(b.items):
        if isinstance(item, Block):
            for path in item.paths:
                out += structural(path, tags, text, close)
            if close and b.label is not None and b.state == WAITING and i == len(b.items) - 1:
                out += [tags[T.CONCLUSION], tags[T.CONCLUSION_END], tags[T.PARALLEL_END]]
        elif text is not None and i in b.structure.text:
            out.append(text)
        else:
            out.append(item)
    if close and b.label is not None and b.state != DONE:
        s = b.structure
        if s.block is not None and s.block.state in ("start", "goal"):
            start = len(out) - (len(b.items) - s.block.index)  # the unforked block: text
            out[start:] = [
                text if text is not None and t in tags.values() else t for t in out[start:]
            ]
        elif s.block is not None and s.block.state != "paths":
            out += [tags[t] for t in s.closing_tags()]
        out.append(tags[T.PATH_END])
    return out


@dataclass(eq=False)
class State:
    trunk: Branch
    branches: list[Branch]
    prompt_len: int
    total_limit: int
    critical_limit: int
    total: int = 0
    last_pos: int = 0
    streamed: int = 0  # trunk items already streamed
    held: list[int] = field(default_factory=list)  # trunk ids not yet decodable
