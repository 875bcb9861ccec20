"""What the training layout allows next in one branch of a Multiverse decode.

The engine (`braid.methods.multiverse`) feeds every tag a branch writes to the branch's
`Structure`, which keeps the stack of open tags that `braid.multiverse.attention.multiverse_layout`
keeps and answers what the tag does:

- KEEP: structure, nothing to do now;
- FORK: a `</Goal>` that closes a Goal; the caller opens the paths (`fork`) or refuses (`refuse`);
- END: the `</Path>` that ends this branch's path;
- TEXT: a tag the training layout rejects here; it is decoded as plain text, `problem` says why.

A refused block (a `<Parallel>` where no block may open, or a `</Goal>` the engine will not fork)
is decoded as text up to its own `</Parallel>`; an unmatched `</Path>` inside it still ends the
path it sits in, so a refused nested fork never leaves its path unable to end. Hence the tags
kept as structure, with every tag in `text` read as text, always form a sequence the layout
accepts, and the engine's forks, joins and path ends are exactly the layout's.

Inside one branch the stack is short: `<Parallel>` opens only at the branch's own top level (top
level of the output, or directly in its path), and a fork moves the block's paths into new
branches, so a branch holds at most one open block: [<Parallel>, <Goal>, <Outline>] before the
fork, [<Parallel>, <Conclusion>] after the join, [<Parallel>] after `</Conclusion>`.
"""

from __future__ import annotations

from dataclasses import dataclass

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

KEEP, FORK, END, TEXT = "keep", "fork", "end", "text"


@dataclass
class Open:
    """An open tag; `index` is its place in the branch's items."""

    tag: str
    index: int
    state: str = "start"  # <Parallel>: start -> goal -> paths -> conclusion -> done
    outlines: int = 0


class Structure:
    """The open tags of one branch (the trunk, or one path: `in_path`)."""

    def __init__(self, in_path: bool):
        self.in_path = in_path
        self.stack: list[Open] = []
        self.refused_depth = 0  # open <Parallel>s of the refused block being read as text
        self.refused_paths = 0  # its open <Path>s
        self.tags: list[int] = []  # item indices of every tag fed
        self.text: set[int] = set()  # item indices of the tags decoded as text
        self.problem: str | None = None  # why the last TEXT tag was rejected

    @property
    def block(self) -> Open | None:
        return self.stack[0] if self.stack else None

    @property
    def goal(self) -> Open | None:
        return self.stack[1] if len(self.stack) > 1 and self.stack[1].tag == GOAL else None

    def feed(self, tag: str, index: int) -> str:
        """What the tag at `index` of the branch's items does (KEEP, FORK, END or TEXT)."""
        self.tags.append(index)
        self.problem = None
        if self.refused_depth and not self._leaves_refused(tag):
            self.text.add(index)
            return TEXT
        action = self._rule(tag, index)
        if action == TEXT:
            self.text.add(index)
        return action

    def _leaves_refused(self, tag: str) -> bool:
        """Count a refused block's tags; True only for a `</Path>` that ends the path."""
        if tag == PARALLEL:
            self.refused_depth += 1
        elif tag == PARALLEL_END:
            self.refused_depth -= 1
        elif tag == PATH:
            self.refused_paths += 1
        elif tag == PATH_END and self.refused_paths:
            self.refused_paths -= 1
        elif tag == PATH_END and self.in_path:
            self.refused_depth = 0
            return True
        return False

    def _rule(self, tag: str, index: int) -> str:
        top = self.stack[-1] if self.stack else None
        if tag == PARALLEL:
            if top is not None:
                self.refused_depth, self.refused_paths = 1, 0
                return self._reject(
                    f"{PARALLEL} inside {top.tag}: a block opens at top level or directly in a "
                    f"{PATH}; the block is decoded as text"
                )
            self.stack.append(Open(PARALLEL, index))
        elif tag == GOAL:
            if top is None or top.tag != PARALLEL or top.state != "start":
                return self._reject(f"{GOAL} outside the start of a {PARALLEL}")
            top.state = "goal"
            self.stack.append(Open(GOAL, index))
        elif tag == OUTLINE:
            if top is None or top.tag != GOAL:
                return self._reject(f"{OUTLINE} outside a {GOAL}")
            self.stack[0].outlines += 1
            self.stack.append(Open(OUTLINE, index))
        elif tag in (OUTLINE_END, CONCLUSION_END):
            if top is None or top.tag != "<" + tag[2:]:
                return self._reject(f"{tag} closes nothing")
            self.stack.pop()
            if tag == CONCLUSION_END:
                self.stack[-1].state = "done"
        elif tag == GOAL_END:
            if top is None or top.tag != GOAL:
                return self._reject(f"{GOAL_END} closes nothing")
            return FORK
        elif tag == PATH_END:
            if not self.in_path:
                return self._reject(f"{PATH_END} outside a path")
            if top is not None:
                return self._reject(f"{PATH_END} inside an open {top.tag}: close that block first")
            return END
        elif tag in (PATH, CONCLUSION):
            return self._reject(f"{tag} is the engine's to write, not the model's")
        elif tag == PARALLEL_END:
            if top is None or top.tag != PARALLEL or top.state != "done":
                return self._reject(f"{PARALLEL_END} closes nothing")
            self.stack.pop()
        return KEEP

    def _reject(self, problem: str) -> str:
        self.problem = problem
        return TEXT

    def fork(self) -> None:
        """The `</Goal>` just fed opened the block's paths."""
        self.stack.pop()
        self.stack[0].state = "paths"

    def refuse(self) -> None:
        """The `</Goal>` just fed opens nothing: its whole block is decoded as text."""
        self._block_as_text()
        self.refused_depth, self.refused_paths = 1, 0

    def joined(self, index: int) -> None:
        """The paths have joined; the `<Conclusion>` at `index` was forced."""
        self.tags.append(index)
        self.stack[0].state = "conclusion"
        self.stack.append(Open(CONCLUSION, index))

    def closing(self) -> list[str]:
        """Tags that end this path validly now (for an end of sequence inside it): a block not
        yet forked is read as text, an open Conclusion and block are closed."""
        self.refused_depth = 0
        block = self.block
        if block is None:
            return [PATH_END]
        if block.state in ("start", "goal"):
            self._block_as_text()
            return [PATH_END]
        return [*self.closing_tags(), PATH_END]

    def closing_tags(self) -> list[str]:
        """The tags that close a joined block still open in this branch."""
        block = self.block
        if block is None or block.state not in ("conclusion", "done"):
            return []
        return ([CONCLUSION_END] if block.state == "conclusion" else []) + [PARALLEL_END]

    def _block_as_text(self) -> None:
        # tags before a </Goal> are causal and sequential either way: reading them as text
        # changes no position or visibility already used
        start = self.stack[0].index
        self.text.update(i for i in self.tags if i >= start)
        self.stack = []
