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

Structure the training layout refuses, the engine refuses: each branch feeds its tags to a
`braid.multiverse.structure.Structure`, which keeps the stack `multiverse_layout` keeps, so every
fork, join and path end is one training accepts. Anything else (a block opened inside a Goal or
a Conclusion, a `</Goal>` without well-numbered outlines, too many paths, nesting past the cap,
a `</Path>` outside a path or inside a nested block that is still open, a stray `</Parallel>`)
is recorded as a warning and decoded as text: a refused block up to its own `</Parallel>` (or
its path's `</Path>`), a stray tag alone. `braid.multiverse.branch.structural` gives the output
with those tags as text; `multiverse_layout` accepts it, and its positions and visibility are
the engine's. End of sequence inside a path closes the path (and a joined block still open in
it) as training would.

Two tokenizer layouts. braid's own models use tags that absorb the whitespace around them
(`braid.multiverse.tags`): `<Path>` sits right after `</Goal>` or the previous `</Path>`, and the
forced text is `<Path>` "{label}:" and `<Conclusion>`. The released checkpoint (Multiverse-32B)
appends the twelve tags as plain special tokens after the base vocabulary, and its data put a
newline token between tags. For such a tokenizer ("\n<Path>\n" encodes to more than the tag)
the engine forces the official engine's text, "\n<Path>\n{label}:" in each path and
"<Conclusion>\n" after the join, placed as the official training code (Multiverse4FM/Multiverse,
train/utils.py) places them: the leading newline once, in the forking branch, at
position(`</Goal>`) + 1 (where every `<Path>` restarts too), and a newline after the last
path's `</Path>` at its position + 1, seeing every path, before `<Conclusion>` at max
position(`</Path>`) + 1. Newlines between the model's own tags are text. Positions and
visibility then equal the official training code's on the output. One thing is not reproduced,
by design: that code puts a token between a `</Path>` and the next `<Path>` in no path span, so
later siblings see it, and through it the earlier path (the "small leak"). No parallel decoder
can give a path a token that depends on a sibling still being decoded, so braid writes none
there (`</Path><Path>`), and on that output the official mask has no leak to reproduce. (The
official engine keeps the token each path sampled after its `</Path>`, normally a newline,
which its later paths never saw: its output and its training layout disagree there.)

Budgets: `max_tokens` bounds the critical path (the longest chain of positions, as in the
paper), `SamplingParams.max_total_tokens` all tokens across paths; both finish with "length".
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from braid.errors import InvalidRequestError
from braid.methods.autoregressive import sample_next
from braid.model.batch import Append
from braid.multiverse import tags as T
from braid.multiverse.branch import ACTIVE, DONE, WAITING, Block, Branch, State, flatten
from braid.multiverse.grammar import canonical
from braid.multiverse.structure import END, FORK, TEXT
from braid.sampling import SamplingParams, apply_penalties

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request

_TAG_RE = re.compile(r"\s*(" + "|".join(re.escape(t) for t in T.TAGS) + r")\s*")
_NEWLINES = re.compile(r"\n{2,}")


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
        self.names: dict[int, str] = {}  # id -> structural tag
        self.released = False  # the released checkpoint's layout (see the module docstring)

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
            self.names = {self.tags[t]: t for t in T.TAGS if t not in (T.THINK, T.THINK_END)}
            # braid's tags swallow the newlines around them; the released checkpoint's do not
            self.released = engine.tokenizer.encode(f"\n{T.PATH}\n", special=False) != [
                self.tags[T.PATH]
            ]
        return self.tags

    def _path_head(self, engine: Engine, label: str) -> tuple[list[int], list[int]]:
        """The forced start of path `label`: (tokens before `<Path>`, which every path sees
        from the forking branch; tokens from `<Path>` on, in the path)."""
        enc = engine.tokenizer.encode
        if not self.released:
            return [], [self.tags[T.PATH], *enc(f"{label}:", special=False)]
        ids = enc(f"\n{T.PATH}\n{label}:", special=False)  # the official engine's text
        k = ids.index(self.tags[T.PATH])
        return ids[:k], ids[k:]

    def _conclusion_head(self, engine: Engine) -> tuple[list[int], list[int]]:
        """The forced start of a conclusion: (tokens after the last path's `</Path>`, tokens
        from `<Conclusion>` on)."""
        if not self.released:
            return [], [self.tags[T.CONCLUSION]]
        enc = engine.tokenizer.encode
        return enc("\n", special=False), enc(f"{T.CONCLUSION}\n", special=False)

    def check(self, engine: Engine, params: SamplingParams) -> None:
        """Refuse what this method cannot honour, before the request is queued."""
        self._tag_ids(engine)
        if params.stop:
            raise InvalidRequestError(
                "stop strings are not supported with method 'multiverse'; use stop_token_ids"
            )
        if params.logprobs is not None or params.min_tokens:
            raise InvalidRequestError(
                "logprobs and min_tokens are not supported with method 'multiverse' (its text "
                "is not one sequence of sampled tokens): leave them unset"
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
        logits, _, _ = engine.forward(appends, torch.tensor(rows, device=engine.device))
        if any(req.params.logits_processors for req, _, _ in samplers):
            logits = logits.clone()  # a normal tensor: processors may write in place
        for i, (req, _, b) in enumerate(samplers):
            for proc in req.params.logits_processors:
                logits[i] = proc(b.context, logits[i])
        if any(req.params.penalised for req, _, _ in samplers):
            # a branch's history is what it sees: its prompt and its context (not its siblings)
            params = [req.params for req, _, _ in samplers]
            seen = [(req.prompt_ids, b.context) for req, _, b in samplers]
            logits = apply_penalties(logits, params, seen, [req.stop_ids for req, _, _ in samplers])
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
        stop = req.stop_ids
        if token in stop and b is not st.trunk:
            # the path ends there, closed as training closes paths, so the output stays valid
            closing = b.structure.closing()
            closed = "".join(closing)
            self._warn(req, f"end of sequence inside path {b.label}: closed with {closed}")
            if self.released:  # a newline between tags, as its data write them
                ids = engine.tokenizer.encode("\n".join(closing), special=False)
            else:
                ids = [self.tags[t] for t in closing]
            if self._room(req, st, len(ids), b.next_pos + len(ids) - 1):
                self._schedule(st, b, ids)
                self._end_path(engine, req, st, b)
            return
        if not self._room(req, st, 1, b.next_pos):
            return
        self._schedule(st, b, [token])
        if token in stop:
            req.finish_reason = "stop"
            return
        tag = self.names.get(token)
        if tag is None:
            return
        action = b.structure.feed(tag, len(b.items) - 1)
        if action == FORK:
            self._fork(engine, req, st, b)
        elif action == END:
            self._end_path(engine, req, st, b)
        elif action == TEXT and b.structure.problem:
            where = "the trunk" if b.label is None else f"path {b.label}"
            self._warn(req, f"{b.structure.problem} (in {where}): kept as text")
            if tag == T.PARALLEL:
                req.stats.fallbacks += 1

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
            b.structure.refuse()  # the block is decoded as text until its </Parallel>
            return
        heads = [self._path_head(engine, label) for label in labels]
        lead, forced = heads[0][0], [head for _, head in heads]
        goal_end = b.next_pos - 1
        # every <Path> sits at position(</Goal>) + 1, as does the released layout's newline
        last = goal_end + max(len(lead), max(map(len, forced)))
        if not self._room(req, st, len(lead) + sum(map(len, forced)), last):
            return
        self._schedule(st, b, lead)
        block = Block([])
        for label, segment, tokens in zip(labels, req.graph.fork(b.segment, len(labels)), forced):
            path = Branch(
                segment=segment,
                next_pos=goal_end + 1,
                label=label,
                depth=b.depth + 1,
                context=list(b.context),
                parent=b,
                block=block,
            )
            self._schedule(st, path, tokens)
            block.paths.append(path)
        b.items.append(block)
        b.state = WAITING
        b.structure.fork()
        st.branches += block.paths
        req.stats.blocks += 1
        req.stats.paths += len(labels)

    def _blank(self, engine: Engine, ids: list) -> bool:
        return not engine.tokenizer.decode(ids, special=True).strip()

    def _outline_labels(self, engine: Engine, b: Branch) -> tuple[list[str], str | None]:
        """The labels of the Goal that just closed, or why they cannot open paths. Newlines
        between the tags are allowed (the released layout writes them)."""
        tags, s = self.tags, b.structure
        block, goal = s.block, s.goal
        if any(i >= block.index for i in s.text):
            return [], "a tag inside the block was read as text"
        if not self._blank(engine, b.items[block.index + 1 : goal.index]):
            return [], "<Goal> does not follow <Parallel>"
        ids = b.items[goal.index + 1 : -1]
        opens = [k for k, t in enumerate(ids) if t == tags[T.OUTLINE]]
        ends = [k for k, t in enumerate(ids) if t == tags[T.OUTLINE_END]]
        if not opens:
            return [], "no outlines"
        gaps = [ids[: opens[0]], ids[ends[-1] + 1 :]]
        gaps += [ids[e + 1 : o] for e, o in zip(ends, opens[1:], strict=False)]
        if not all(self._blank(engine, gap) for gap in gaps):
            return [], "text outside <Outline> in the Goal"
        labels = []
        for o, e in zip(opens, ends, strict=True):
            text = engine.tokenizer.decode(ids[o + 1 : e]).strip()
            labels.append(text.split(":", 1)[0].strip() if ":" in text else "")
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
        base = len(parent.context)
        for p in block.paths:  # the continuation sees every path
            parent.context += p.context[base:]
        lead, conclusion = self._conclusion_head(engine)
        after_last = block.paths[-1].next_pos  # the released layout's newline follows the last path
        start = max(p.next_pos for p in block.paths)  # <Conclusion>: max position(</Path>) + 1
        last = max(after_last + len(lead), start + len(conclusion)) - 1
        if self._room(req, st, len(lead) + len(conclusion), last):
            parent.state = ACTIVE
            parent.next_pos = after_last
            self._schedule(st, parent, lead)
            parent.next_pos = start
            self._schedule(st, parent, conclusion)
            parent.structure.joined(len(parent.items) - len(conclusion))

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
        text = self._render(engine, req, flatten(b.items))
        req.chunks.append("\n" + text + "\n")
        blocks = [x for x in b.parent.items if isinstance(x, Block)]
        block = next(k for k, x in enumerate(blocks) if x is b.block)
        req.paths.append({"block": block, "label": b.label, "text": text})

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
