"""Multiverse decoding (Yang et al. 2025): the model forks its own generation into parallel paths.

The model writes sequential text. When a branch emits `</Goal>` after `<Parallel><Goal>` with
well-numbered outlines, the request forks one *path* per outline in its token graph: each path
is a child segment of the branch, starts with the forced tokens `<Path>` and `label:` at
position(`</Goal>`) + 1, and decodes independently of its siblings. Every open path of every
request advances in the same batched target pass. A path ends at `</Path>`; when all siblings
have ended, the branch resumes in a segment that joins them (it sees the prefix and every path
through their cached keys and values: nothing is recomputed or copied), with `<Conclusion>`
forced at max over siblings of position(`</Path>`) + 1. These are exactly the positions and
visibility of Multiverse Attention in training (`braid.multiverse.attention`), so one forward
pass over the final sequence with the training mask reproduces the engine's logits.

Malformed structure never crashes or hangs: a `</Goal>` without well-numbered outlines, too many
paths, nesting past the cap, `</Path>` outside a path or `</Parallel>` inside an open path are
recorded as warnings; the branch keeps decoding sequentially (for a refused fork, until the
block's `</Parallel>`), so the output stays a valid continuation of the model.

Budgets: `max_tokens` bounds the critical path (the longest chain of positions, as in the
paper), `SamplingParams.max_total_tokens` all tokens across paths; both finish with "length".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from braid.errors import InvalidRequestError
from braid.methods.autoregressive import sample_next
from braid.model.batch import Append
from braid.multiverse import tags as T
from braid.multiverse.grammar import canonical
from braid.sampling import SamplingParams, apply_penalties

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request

ACTIVE, WAITING, DONE = "active", "waiting", "done"
_TAG_RE = re.compile(r"\s*(" + "|".join(re.escape(t) for t in T.TAGS) + r")\s*")
_NEWLINES = re.compile(r"\n{2,}")


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
    goal: int | None = None  # index in items of the last `<Goal>` since the last block
    open_blocks: int = 0  # forked blocks whose `</Parallel>` has not come yet
    sequential: int = 0  # open `<Parallel>`s being decoded sequentially after a refused fork
    parent: Branch | None = None
    block: Block | None = None  # the block this path belongs to

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


class Multiverse:
    name = "multiverse"
    supports_logits_processors = True
    rows_per_position = 8  # the cache may hold 8x the context in rows across parallel paths
    rebuilds_state = False  # a request's paths cannot be rebuilt from its tokens (engine undo)

    def __init__(self, max_paths: int = 16, max_depth: int = 4):
        if max_paths < 1 or max_depth < 1:
            raise InvalidRequestError(
                f"max_paths and max_depth must be >= 1, got {max_paths} and {max_depth}"
            )
        self.max_paths, self.max_depth = max_paths, max_depth
        self.states: dict[int, State] = {}
        self.tags: dict[str, int] | None = None

    def release(self, request: Request) -> None:
        self.states.pop(request.id, None)

    # -- setup ------------------------------------------------------------------------------
    def _tag_ids(self, engine: Engine) -> dict[str, int]:
        if self.tags is None:
            try:
                self.tags = T.tag_ids(engine.tokenizer)
            except InvalidRequestError as e:
                message = f"method 'multiverse' needs a Multiverse model: {e}"
                raise InvalidRequestError(message) from None
        return self.tags

    def check(self, engine: Engine, params: SamplingParams) -> None:
        """Refuse what this method cannot honour, before the request is queued."""
        self._tag_ids(engine)
        if params.stop:
            raise InvalidRequestError(
                "stop strings are not supported with method 'multiverse'; use stop_token_ids"
            )

    def _state(self, engine: Engine, req: Request) -> State:
        st = self.states.get(req.id)
        if st is None:
            n = len(req.prompt_ids)
            rows = engine.pool.max_capacity - n  # sibling paths share positions, not rows
            trunk = Branch(segment=0, next_pos=n)
            cached = req.graph.length  # prompt rows the engine copied from a sibling sample
            trunk.pending, trunk.pending_pos = list(req.prompt_ids[cached:]), list(range(cached, n))
            total = min(req.params.max_total_tokens or rows, rows)
            critical = min(req.params.max_tokens, engine.max_context - n)
            st = State(trunk, [trunk], n, total, critical)
            # streamed: the sequential parts as they come, each top-level path when it ends
            req.chunks = []
            self.states[req.id] = st
        return st

    # -- the step ---------------------------------------------------------------------------
    def step(self, engine: Engine, requests: list[Request]) -> None:
        appends, rows, samplers, n = [], [], [], 0
        for req in requests:
            st = self._state(engine, req)
            # tokens of ending or forking branches go first: a segment's rows must precede
            # those of the segments that descend from it
            order = [b for b in st.branches if b.state != ACTIVE and b.pending]
            order += [b for b in st.branches if b.state == ACTIVE]
            ids, pos, seg = [], [], []
            for b in order:
                ids += b.pending
                pos += b.pending_pos
                seg += [b.segment] * len(b.pending)
                b.pending, b.pending_pos = [], []
                if b.state == ACTIVE:
                    rows.append(n + len(ids) - 1)
                    samplers.append((req, st, b))
            appends.append(Append(req.graph, ids, pos, seg))
            n += len(ids)
            req.stats.passes += 1
        logits, _, _ = engine.forward(appends, torch.tensor(rows))
        if any(req.params.logits_processors for req, _, _ in samplers):
            logits = logits.clone()  # a normal tensor: processors may write in place
        for i, (req, _, b) in enumerate(samplers):
            for proc in req.params.logits_processors:
                logits[i] = proc(b.context, logits[i])
        if any(req.params.penalised for req, _, _ in samplers):
            # a branch's history is what it sees: its prompt and its context (not its siblings)
            params = [req.params for req, _, _ in samplers]
            seen = [(req.prompt_ids, b.context) for req, _, b in samplers]
            logits = apply_penalties(logits, params, seen)
        tokens = sample_next(logits, [req for req, _, _ in samplers])
        for (req, st, b), token in zip(samplers, tokens, strict=True):
            if not req.finished:
                self._advance(engine, req, st, b, token)
        for req in requests:
            if not req.finished:  # a budget just filled up ends the request, as in `ar`
                self._room(req, self.states[req.id], 0, 0)
            self._update_output(engine, req, self.states[req.id])

    # -- what a sampled token does ------------------------------------------------------------
    def _advance(self, engine: Engine, req: Request, st: State, b: Branch, token: int) -> None:
        tags, stop = self.tags, req.stop_ids
        if token in stop and b is not st.trunk:
            # the path ends there, closed as training closes paths, so the output stays valid
            self._warn(req, f"end of sequence inside path {b.label}: closed with </Path>")
            if self._room(req, st, 1, b.next_pos):
                self._schedule(st, b, [tags[T.PATH_END]])
                self._end_path(engine, req, st, b)
            return
        if not self._room(req, st, 1, b.next_pos):
            return
        self._schedule(st, b, [token])
        if token in stop:
            req.finish_reason = "stop"
            return
        if b.sequential:  # inside a block whose fork was refused: tags are text
            if token == tags[T.PARALLEL]:
                b.sequential += 1
            elif token == tags[T.PARALLEL_END]:
                b.sequential -= 1
        elif token == tags[T.GOAL]:
            b.goal = len(b.items) - 1
        elif token == tags[T.GOAL_END]:
            self._fork(engine, req, st, b)
        elif token == tags[T.PATH_END]:
            if b.label is None:
                self._warn(req, "</Path> outside a path: kept as text")
            else:
                self._end_path(engine, req, st, b)
        elif token == tags[T.PARALLEL_END]:
            if b.open_blocks:
                b.open_blocks -= 1
            elif b.label is not None:
                self._warn(req, f"</Parallel> inside open path {b.label}: kept as text")

    @staticmethod
    def _schedule(st: State, b: Branch, tokens: list[int]) -> None:
        b.schedule(tokens)
        st.total += len(tokens)
        st.last_pos = max(st.last_pos, b.next_pos - 1)

    def _room(self, req: Request, st: State, count: int, last_pos: int) -> bool:
        """Whether `count` more tokens (the last at `last_pos`) fit both budgets, and room is
        left after them; otherwise the request finishes with "length"."""
        critical = max(st.last_pos, last_pos) - st.prompt_len + 1
        total = st.total + count
        fits = total <= st.total_limit and critical <= st.critical_limit
        full = total >= st.total_limit or critical >= st.critical_limit
        if count == 0 and not full or count and fits:
            return True
        if any(br.state == WAITING for br in st.branches):
            self._warn(req, "a parallel block was still open at the token budget")
        req.finish_reason = "length"
        return False

    def _fork(self, engine: Engine, req: Request, st: State, b: Branch) -> None:
        labels, problem = self._outline_labels(engine, b)
        if problem is None and b.depth + 1 > self.max_depth:
            problem = f"nesting deeper than {self.max_depth} blocks"
        if problem is None and len(labels) > self.max_paths:
            problem = f"{len(labels)} outlines, more than the cap of {self.max_paths} paths"
        if problem is not None:
            self._warn(req, f"sequential fallback at </Goal>: {problem}")
            req.stats.fallbacks += 1
            # decode the block as text until its </Parallel>, if a <Parallel> opened it
            g = b.goal
            opened = g is not None and g > 0 and b.items[g - 1] == self.tags[T.PARALLEL]
            b.sequential, b.goal = int(opened), None
            return
        forced = [
            [self.tags[T.PATH], *engine.tokenizer.encode(f"{label}:", special=False)]
            for label in labels
        ]
        longest = max(len(f) for f in forced)
        if not self._room(req, st, sum(map(len, forced)), b.next_pos + longest - 1):
            return
        block = Block([])
        for label, segment, tokens in zip(labels, req.graph.fork(b.segment, len(labels)), forced):
            path = Branch(
                segment=segment,
                next_pos=b.next_pos,
                label=label,
                depth=b.depth + 1,
                context=list(b.context),
                parent=b,
                block=block,
            )
            self._schedule(st, path, tokens)
            block.paths.append(path)
        b.items.append(block)
        b.state, b.goal = WAITING, None
        b.open_blocks += 1
        st.branches += block.paths
        req.stats.blocks += 1
        req.stats.paths += len(labels)

    def _outline_labels(self, engine: Engine, b: Branch) -> tuple[list[str], str | None]:
        """The labels of the Goal that just closed, or why they cannot open paths."""
        tags = self.tags
        if b.goal is None:
            return [], "no <Goal> before it"
        if b.goal == 0 or b.items[b.goal - 1] != tags[T.PARALLEL]:
            return [], "<Goal> does not follow <Parallel>"
        goal = b.items[b.goal + 1 : -1]
        labels, i = [], 0
        while i < len(goal):
            if goal[i] != tags[T.OUTLINE]:
                return [], "text outside <Outline> in the Goal"
            try:
                end = goal.index(tags[T.OUTLINE_END], i)
            except ValueError:
                return [], "an <Outline> is not closed"
            text = engine.tokenizer.decode(goal[i + 1 : end]).strip()
            labels.append(text.split(":", 1)[0].strip() if ":" in text else "")
            i = end + 1
        if not labels:
            return [], "no outlines"
        prefix = f"{b.label}." if b.label is not None else ""
        expected = [f"{prefix}{k}" for k in range(1, len(labels) + 1)]
        if labels != expected:
            return [], f"outline labels {labels} are not numbered {expected}"
        return labels, None

    def _end_path(self, engine: Engine, req: Request, st: State, b: Branch) -> None:
        """Mark a path finished; when all its siblings are, the parent resumes past them."""
        b.state = DONE
        if b.depth == 1:
            self._stream_path(engine, req, b)
        block = b.block
        if not all(p.state == DONE for p in block.paths):
            return
        parent = b.parent
        parent.segment = req.graph.join([p.segment for p in block.paths])
        parent.next_pos = max(p.next_pos for p in block.paths)
        base = len(parent.context)
        for p in block.paths:  # the continuation sees every path
            parent.context += p.context[base:]
        if self._room(req, st, 1, parent.next_pos):
            parent.state = ACTIVE
            self._schedule(st, parent, [self.tags[T.CONCLUSION]])

    @staticmethod
    def _warn(req: Request, message: str) -> None:
        req.stats.warnings.append(message)

    @staticmethod
    def _render(engine: Engine, req: Request, ids: list[int], whole: bool = True) -> str:
        """Text of `ids` with every tag on its own line: canonical for a whole output; for a
        streamed piece, only the whitespace next to tags changes (pieces must concatenate)."""
        text = engine.tokenizer.decode([t for t in ids if t not in req.stop_ids], special=True)
        if whole:
            return canonical(text)
        return _NEWLINES.sub("\n", _TAG_RE.sub(r"\n\1\n", text))

    def _stream_path(self, engine: Engine, req: Request, b: Branch) -> None:
        req.chunks.append("\n" + self._render(engine, req, flatten(b.items)) + "\n")

    def _update_output(self, engine: Engine, req: Request, st: State) -> None:
        req.stats.generated_tokens = st.total
        req.stats.critical_path = max(0, st.last_pos - st.prompt_len + 1)
        items = st.trunk.items
        st.held += [t for t in items[st.streamed :] if isinstance(t, int)]
        st.streamed = len(items)
        text = self._render(engine, req, st.held, whole=False)
        if req.finished or (text and not text.endswith("\ufffd")):
            req.chunks.append(text)
            st.held = []
        if req.finished:
            # paths a budget cut short were never streamed: they come last, as they stand
            for b in st.branches:
                if b.depth == 1 and b.state != DONE:
                    self._stream_path(engine, req, b)
            req.output_ids = flatten(items)
            req.text = self._render(engine, req, req.output_ids)
