"""Multiverse outputs for people: the structure readable at a glance, and as JSON.

Each parallel block is drawn as a box: the goal's outlines, then every path labelled and
indented under it (nested blocks indent further), then the conclusion. Colour only on a terminal.
Text that does not parse (a budget cut a block, a fallback) is shown canonicalised, with why.
"""

from __future__ import annotations

import dataclasses
import textwrap

from braid.engine.request import RequestOutput
from braid.multiverse.grammar import Block, GrammarError, PathNode, Think, canonical, parse

_COLOURS = {"frame": "\033[36m", "label": "\033[1;33m", "dim": "\033[2m", "off": "\033[0m"}


def render(text: str, colour: bool = False) -> str:
    """The structure of a Multiverse output as indented text."""
    c = _COLOURS if colour else dict.fromkeys(_COLOURS, "")
    try:
        doc = parse(text)
    except GrammarError as e:
        note = f"{c['dim']}(structure incomplete: {e}){c['off']}"
        return f"{canonical(text)}\n{note}"
    lines: list[str] = []

    def emit(s: str, depth: int) -> None:
        pad = "│ " * depth
        for line in s.splitlines() or [""]:
            lines.append(f"{c['frame']}{pad}{c['off']}{line}")

    def items(xs: list, depth: int) -> None:
        for x in xs:
            if isinstance(x, str):
                emit(x, depth)
            elif isinstance(x, Think):
                emit(f"{c['dim']}<Think>{c['off']}", depth)
                items(x.items, depth)
                emit(f"{c['dim']}</Think>{c['off']}", depth)
            else:
                block(x, depth)

    def block(b: Block, depth: int) -> None:
        emit(f"{c['frame']}┌ parallel: {len(b.paths)} paths{c['off']}", depth)
        for o in b.outlines:
            emit(f"{c['dim']}goal {o.label}: {o.text}{c['off']}", depth + 1)
        for p in b.paths:
            path(p, depth + 1)
        emit(f"{c['frame']}└ conclusion{c['off']}", depth)
        emit(textwrap.indent(b.conclusion, "  "), depth)

    def path(p: PathNode, depth: int) -> None:
        emit(f"{c['label']}[{p.label}]{c['off']}", depth)
        items(p.items, depth + 1)

    items(doc.items, 0)
    return "\n".join(lines)


def summary(out: RequestOutput) -> str:
    """One line of what parallelism bought: tokens, critical path, blocks, paths, fallbacks."""
    s = out.stats
    line = (
        f"{s.generated_tokens} tokens, critical path {s.critical_path} "
        f"(parallelism {s.parallelism:.2f}x), {s.blocks} blocks, {s.paths} paths, "
        f"{s.fallbacks} fallbacks, {s.passes} passes, {s.seconds:.2f} s"
    )
    if s.warnings:
        line += "; warnings: " + "; ".join(s.warnings)
    return line


def tree(text: str) -> dict | None:
    """The parsed tree as plain JSON data, or None when the text does not parse."""
    try:
        doc = parse(text)
    except GrammarError:
        return None
    return _plain(doc)


def _plain(x):
    if dataclasses.is_dataclass(x):
        fields = {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        fields.pop("offset", None)
        return {"type": type(x).__name__, **fields}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x
