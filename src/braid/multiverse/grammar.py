"""The text grammar of Multiverse outputs: parse and validate, serialize, make sequential.

Public API:

- `parse(text) -> Document`: the tree, or raises the first `GrammarError` (by position).
- `errors(text) -> list[GrammarError]`: every error found, by position; [] when `text` is valid.
  Numbering and outline/path matching errors are all reported; parsing stops at the first
  structural error (a misplaced or unclosed tag), which is reported too.
- `serialize(doc) -> str`: the canonical text of a tree.
- `canonical(text) -> str`: the canonical text of ANY text, also malformed: every tag on its own
  line, the whitespace around tags dropped, and an Outline's or Path's leading label written
  `L: ` ("1:x" -> "1: x"). For valid text, `canonical(text) == serialize(parse(text))`.
- `to_sequential(text_or_doc) -> str`: the same reasoning as plain prose: tags, the Goals (the
  plan of each block), path labels and every "Let's think in parallel." removed; paths in
  order, then the conclusion; pieces joined by blank lines.
- `GrammarError(InvalidRequestError)`: `.offset` (0-based character), `.line`, `.column`
  (1-based), `.what`; its message reads "line L, column C: what is wrong".

The tree (dataclasses; `offset` is the character offset of the opening tag and is ignored by
`==`, so hand-built trees compare equal to parsed ones):

    Document(items: list[str | Think])        top level: text and Think blocks
    Think(items: list[str | Block])           <Think> ... </Think>
    Block(outlines: list[Outline],            <Parallel> <Goal> outlines </Goal>
          paths: list[PathNode],                         paths
          conclusion: str)                               <Conclusion> text </Conclusion> </Parallel>
    Outline(label: str, text: str)            <Outline> label: text </Outline>
    PathNode(label: str, items: list[str | Block])   <Path> label: text, nested blocks </Path>

Text items are stripped and never empty. Labels are the content before the first colon
("1", "2", "2.1"); `Outline.text` and a path's first text item are what follows it.

Rules (whitespace around tags is insignificant everywhere):

- Top level holds text and any number of `<Think>` blocks; a `<Think>` is optional (a prompt
  or a final answer sits outside it) and never nested.
- `<Parallel>` appears only directly inside `<Think>` or inside a `<Path>`. It holds exactly,
  in order and with nothing but whitespace between: one `<Goal>` with one or more `<Outline>`s,
  one or more `<Path>`s, one `<Conclusion>`.
- Outlines and Paths hold text only, apart from nested `<Parallel>` blocks inside a Path; a
  Conclusion holds text only.
- Exactly one Path per Outline, in the same order with the same labels; labels are `1`, `2`, ...
  in a block under `<Think>` and `L.1`, `L.2`, ... in a block nested in the path labelled `L`
  (the path's place in its block decides `L`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

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
    PARALLEL_SENTENCE,
    PATH,
    PATH_END,
    TAGS,
    THINK,
    THINK_END,
)


class GrammarError(InvalidRequestError):
    """Malformed Multiverse structure, at a character offset of the text."""

    def __init__(self, what: str, offset: int, text: str):
        self.what = what
        self.offset = offset
        self.line = text.count("\n", 0, offset) + 1
        self.column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        super().__init__(f"line {self.line}, column {self.column}: {what}")


@dataclass
class Outline:
    label: str
    text: str
    offset: int = field(default=0, compare=False)


@dataclass
class Block:
    outlines: list[Outline]
    paths: list[PathNode]
    conclusion: str
    offset: int = field(default=0, compare=False)


@dataclass
class PathNode:
    label: str
    items: list[Union[str, Block]]  # noqa: UP007 (dataclass annotations are read at run time)
    offset: int = field(default=0, compare=False)


@dataclass
class Think:
    items: list[Union[str, Block]]  # noqa: UP007
    offset: int = field(default=0, compare=False)


@dataclass
class Document:
    items: list[Union[str, Think]]  # noqa: UP007

    def blocks(self) -> list[Block]:
        """Every block, nested ones included, in text order."""
        found: list[Block] = []

        def walk(items: list) -> None:
            for item in items:
                if isinstance(item, Think):
                    walk(item.items)
                elif isinstance(item, Block):
                    found.append(item)
                    for path in item.paths:
                        walk(path.items)

        walk(self.items)
        return found


_TAG_RE = re.compile("(" + "|".join(re.escape(t) for t in TAGS) + ")")
_LABEL_RE = re.compile(r"\s*(\d+(?:\.\d+)*)\s*:\s*(.*)", re.DOTALL)


def _pieces(text: str) -> list[tuple[int, str, bool]]:
    """(offset, string, is_tag) for every tag and every text run between tags."""
    out, at = [], 0
    for part in _TAG_RE.split(text):
        if part:
            out.append((at, part, part in TAGS))
        at += len(part)
    return out


def _split_label(content: str) -> tuple[str, str] | None:
    """("2.1", "rest") for "2.1: rest"; None when there is no colon."""
    if ":" not in content:
        return None
    label, rest = content.split(":", 1)
    return label.strip(), rest.strip()


class _Stop(Exception):
    """A structural error: parsing cannot go on."""


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pieces = _pieces(text)
        self.i = 0
        self.found: list[GrammarError] = []

    # -- helpers ------------------------------------------------------------------------------

    def note(self, what: str, offset: int) -> None:
        self.found.append(GrammarError(what, offset, self.text))

    def stop(self, what: str, offset: int) -> _Stop:
        self.note(what, offset)
        return _Stop()

    def where(self, offset: int) -> str:
        e = GrammarError("", offset, self.text)
        return f"line {e.line}, column {e.column}"

    def next(self, opened: str, at: int) -> tuple[int, str, bool]:
        if self.i == len(self.pieces):
            close = "</" + opened[1:]
            raise self.stop(f"{opened} is never closed (add {close})", at)
        piece = self.pieces[self.i]
        self.i += 1
        return piece

    def misplaced(self, tag: str, offset: int, opened: str, at: int) -> _Stop:
        if tag.startswith("</"):
            what = f"{tag} found while {opened} (opened at {self.where(at)}) is still open"
        elif tag == PARALLEL:
            what = f"{PARALLEL} is not allowed inside {opened}; it belongs in {THINK} or a {PATH}"
        else:
            what = f"{tag} is not allowed inside {opened}"
        return self.stop(what, offset)

    def text_only(self, opened: str, at: int) -> tuple[str, int]:
        """The text up to the closing tag of `opened`; any other tag is an error."""
        close = "</" + opened[1:]
        parts = []
        while True:
            offset, s, is_tag = self.next(opened, at)
            if not is_tag:
                parts.append(s)
            elif s == close:
                return "".join(parts).strip(), offset
            else:
                raise self.misplaced(s, offset, opened, at)

    def whitespace_until_tag(self, opened: str, at: int, allowed: str) -> tuple[int, str]:
        while True:
            offset, s, is_tag = self.next(opened, at)
            if is_tag:
                return offset, s
            if s.strip():
                start = offset + len(s) - len(s.lstrip())
                raise self.stop(f"text is not allowed directly inside {opened} ({allowed})", start)

    # -- grammar ------------------------------------------------------------------------------

    def document(self) -> Document:
        items: list[str | Think] = []
        while self.i < len(self.pieces):
            offset, s, is_tag = self.pieces[self.i]
            self.i += 1
            if not is_tag:
                if s.strip():
                    items.append(s.strip())
            elif s == THINK:
                items.append(self.think(offset))
            elif s == PARALLEL:
                raise self.stop(f"{PARALLEL} must be inside {THINK} or a {PATH}", offset)
            elif s.startswith("</"):
                raise self.stop(f"{s} closes nothing: no {'<' + s[2:]} is open", offset)
            else:
                raise self.stop(f"{s} is only allowed inside a {PARALLEL} block", offset)
        return Document(items)

    def think(self, at: int) -> Think:
        items: list[str | Block] = []
        while True:
            offset, s, is_tag = self.next(THINK, at)
            if not is_tag:
                if s.strip():
                    items.append(s.strip())
            elif s == PARALLEL:
                items.append(self.block(offset, prefix=""))
            elif s == THINK_END:
                return Think(items, at)
            else:
                raise self.misplaced(s, offset, THINK, at)

    def block(self, at: int, prefix: str) -> Block:
        inside = f"only {GOAL}, {PATH}s and {CONCLUSION}"
        offset, s = self.whitespace_until_tag(PARALLEL, at, inside)
        if s != GOAL:
            raise self.stop(f"{PARALLEL} must start with {GOAL}, found {s}", offset)
        outlines = self.goal(offset, prefix)
        paths: list[PathNode] = []
        while True:
            offset, s = self.whitespace_until_tag(PARALLEL, at, inside)
            if s == PATH:
                paths.append(self.path(offset, prefix, outlines, len(paths)))
            elif s == CONCLUSION and paths:
                if len(paths) < len(outlines):
                    self.note(
                        f"{CONCLUSION} after {len(paths)} path(s), but the {GOAL} has "
                        f"{len(outlines)} outlines: write one {PATH} per {OUTLINE}",
                        offset,
                    )
                conclusion, _ = self.text_only(CONCLUSION, offset)
                break
            elif s == CONCLUSION:
                raise self.stop(f"{CONCLUSION} before any {PATH}", offset)
            elif s == PARALLEL_END:
                raise self.stop(f"{PARALLEL} must end with a {CONCLUSION} before {s}", offset)
            else:
                raise self.misplaced(s, offset, PARALLEL, at)
        offset, s = self.whitespace_until_tag(PARALLEL, at, f"{CONCLUSION} comes last")
        if s != PARALLEL_END:
            raise self.stop(f"{s} after {CONCLUSION}: the {CONCLUSION} must come last", offset)
        return Block(outlines, paths, conclusion, at)

    def goal(self, at: int, prefix: str) -> list[Outline]:
        outlines: list[Outline] = []
        while True:
            offset, s = self.whitespace_until_tag(GOAL, at, f"only {OUTLINE}s")
            if s == OUTLINE:
                content, _ = self.text_only(OUTLINE, offset)
                expected = f"{prefix}{len(outlines) + 1}"
                split = _split_label(content)
                if split is None:
                    self.note(f"outline has no label: start it with '{expected}:'", offset)
                    split = ("", content)
                elif split[0] != expected:
                    self.note(f"outline label '{split[0]}' should be '{expected}'", offset)
                outlines.append(Outline(split[0], split[1], offset))
            elif s == GOAL_END:
                if not outlines:
                    raise self.stop(f"{GOAL} has no {OUTLINE}: add at least one", offset)
                return outlines
            else:
                raise self.misplaced(s, offset, GOAL, at)

    def path(self, at: int, prefix: str, outlines: list[Outline], index: int) -> PathNode:
        expected = f"{prefix}{index + 1}"
        if index >= len(outlines):
            self.note(
                f"path {index + 1} has no matching {OUTLINE} (the {GOAL} has {len(outlines)})", at
            )
        items: list[str | Block] = []
        label = None
        while True:
            offset, s, is_tag = self.next(PATH, at)
            if not is_tag:
                if label is None:
                    split = _split_label(s)
                    if split is None:
                        self.note(f"path has no label: start it with '{expected}:'", at)
                        label = ""
                    else:
                        label, s = split
                        if label != expected:
                            self.note(f"path label '{label}' should be '{expected}'", at)
                if s.strip():
                    items.append(s.strip())
            elif s == PARALLEL:
                if label is None:
                    self.note(f"path has no label: start it with '{expected}:'", at)
                    label = ""
                items.append(self.block(offset, prefix=expected + "."))
            elif s == PATH_END:
                if label is None:
                    self.note(f"path has no label: start it with '{expected}:'", at)
                    label = ""
                return PathNode(label, items, at)
            else:
                raise self.misplaced(s, offset, PATH, at)


def errors(text: str) -> list[GrammarError]:
    """Every error found in `text`, by position; [] when it is valid."""
    parser = _Parser(text)
    try:
        parser.document()
    except _Stop:
        pass
    return sorted(parser.found, key=lambda e: e.offset)


def parse(text: str) -> Document:
    """The tree of `text`; raises the first GrammarError (by position) if it is malformed."""
    parser = _Parser(text)
    try:
        doc = parser.document()
    except _Stop:
        doc = None
    if parser.found:
        raise min(parser.found, key=lambda e: e.offset)
    assert doc is not None
    return doc


def _labelled(label: str, text: str) -> str:
    if not label:
        return text
    return f"{label}: {text}" if text else f"{label}:"


def canonical(text: str) -> str:
    """Every tag on its own line, whitespace around tags dropped, labels written `L: `."""
    lines: list[str] = []
    previous = ""
    for _, s, is_tag in _pieces(text):
        if not is_tag and previous in (OUTLINE, PATH):
            match = _LABEL_RE.fullmatch(s)
            if match:
                s = _labelled(match[1], match[2].strip())
        if s.strip():
            lines.append(s.strip())
        previous = s if is_tag else ""
    return "\n".join(lines)


def serialize(doc: Document) -> str:
    """The canonical text of a tree."""
    lines: list[str] = []

    def items(xs: list) -> None:
        for x in xs:
            if isinstance(x, str):
                lines.append(x)
            elif isinstance(x, Think):
                lines.append(THINK)
                items(x.items)
                lines.append(THINK_END)
            else:
                block(x)

    def block(b: Block) -> None:
        lines.extend([PARALLEL, GOAL])
        for o in b.outlines:
            lines.extend([OUTLINE, _labelled(o.label, o.text), OUTLINE_END])
        lines.append(GOAL_END)
        for p in b.paths:
            lines.append(PATH)
            rest = p.items
            if rest and isinstance(rest[0], str):
                lines.append(_labelled(p.label, rest[0]))
                rest = rest[1:]
            elif p.label:
                lines.append(f"{p.label}:")
            items(rest)
            lines.append(PATH_END)
        lines.extend([CONCLUSION, b.conclusion, CONCLUSION_END, PARALLEL_END])

    items(doc.items)
    return "\n".join(line for line in lines if line)


def to_sequential(text: str | Document) -> str:
    """The reasoning as prose: tags, Goals, path labels and the parallel sentence removed."""
    doc = parse(text) if isinstance(text, str) else text
    parts: list[str] = []

    def add(s: str) -> None:
        s = s.replace(" " + PARALLEL_SENTENCE, "").replace(PARALLEL_SENTENCE, "").strip()
        if s:
            parts.append(s)

    def items(xs: list) -> None:
        for x in xs:
            if isinstance(x, str):
                add(x)
            elif isinstance(x, Think):
                items(x.items)
            else:
                for p in x.paths:
                    items(p.items)
                add(x.conclusion)

    items(doc.items)
    return "\n\n".join(parts)
