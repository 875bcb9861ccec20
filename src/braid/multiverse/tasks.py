"""Parallelisable arithmetic problems with exact answers, for Multiverse training data.

A problem names 2-8 independent sub-problems and asks for a combination of their values:

    A = 12 + 7
    B = (3 * 4) + (5 * 6)
    C = 18 - 9
    Find A + B + C.

A sub-problem is one operation or, at `nest_rate`, a combination of smaller sub-problems (B
above), which splits again in the solution. With `max_steps` > 1 an operation becomes a chain
of `min_steps`..`max_steps` dependent ones, `A = ((7 + 5) * 3) - 4`, solved one line per step
(`A = 7 + 5 = 12`, `A = 12 * 3 = 36`, `A = 36 - 4 = 32`): each path of the Multiverse form is
then a multi-step computation while its outline (`1: A = 7 + 5`) and the conclusion stay short,
which is what lifts the parallelism ceiling (`LONG_PATHS`, `parallel_ceiling`).

The sequential solution is a regular chain of "x op y = z" lines ending in "Answer: N";
`to_multiverse` turns any solution written in that style into the Multiverse form by dependency
analysis alone (which named steps reference which), so the parallel structure is derived from
the text, not copied from the generator.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from braid.errors import InvalidRequestError
from braid.multiverse.tags import PARALLEL_SENTENCE

COMBINES = ("sum", "max", "min")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_NAMES = "ABCDEFGH"


@dataclass(frozen=True)
class Knobs:
    """Difficulty knobs; the defaults keep prompt + Multiverse solution near 150-350 tokens."""

    min_parts: int = 2
    max_parts: int = 4
    nest_rate: float = 0.2  # chance that a sub-problem splits into smaller ones
    max_depth: int = 2  # levels of parallel blocks: 1 = flat, 2 = a sub-problem splits once
    min_nested: int = 2
    max_nested: int = 3
    max_splits: int = 1  # at most this many sub-problems of one problem split (bounds length)
    max_operand: int = 20  # operands of + and -
    max_factor: int = 9  # operands of *
    ops: str = "+-*"
    combines: tuple[str, ...] = COMBINES
    min_steps: int = 1  # dependent operations per sub-problem (1: the original family)
    max_steps: int = 1
    max_value: int = 99  # chain values stay in [0, max_value]

    def validate(self) -> Knobs:
        def bad(what: str) -> InvalidRequestError:
            return InvalidRequestError(f"task knobs: {what}")

        if not 2 <= self.min_parts <= self.max_parts <= len(_NAMES):
            raise bad(f"need 2 <= min_parts <= max_parts <= {len(_NAMES)}")
        if not 0.0 <= self.nest_rate <= 1.0:
            raise bad("nest_rate must be in [0, 1]")
        if self.max_depth < 1:
            raise bad("max_depth must be >= 1")
        if not 2 <= self.min_nested <= self.max_nested <= 9:
            raise bad("need 2 <= min_nested <= max_nested <= 9")
        if self.max_splits < 0:
            raise bad("max_splits must be >= 0")
        if self.max_operand < 2 or self.max_factor < 2:
            raise bad("max_operand and max_factor must be >= 2")
        if not self.ops or set(self.ops) - set(_OPS):
            raise bad(f"ops must be a non-empty subset of {''.join(_OPS)!r}, got {self.ops!r}")
        if not 1 <= self.min_steps <= self.max_steps <= 12:
            raise bad("need 1 <= min_steps <= max_steps <= 12")
        if self.max_value < max(self.max_operand, self.max_factor) * 2:
            raise bad("max_value must be >= twice max_operand and max_factor")
        if not self.combines or set(self.combines) - set(COMBINES):
            raise bad(f"combines must be a non-empty subset of {COMBINES}, got {self.combines}")
        return self


# -- problem tree ---------------------------------------------------------------------------


@dataclass
class Leaf:
    name: str
    a: int
    op: str
    b: int

    @property
    def value(self) -> int:
        return _OPS[self.op](self.a, self.b)

    @property
    def expr(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    def lines(self) -> list[str]:
        return [f"{self.name} = {self.expr} = {self.value}"]


@dataclass
class Chain:
    """A sub-problem of dependent steps: start, then (op, operand) applied in order."""

    name: str
    start: int
    steps: list[tuple[str, int]]

    def values(self) -> list[int]:
        out, v = [], self.start
        for op, b in self.steps:
            v = _OPS[op](v, b)
            out.append(v)
        return out

    @property
    def value(self) -> int:
        return self.values()[-1]

    @property
    def expr(self) -> str:
        text = str(self.start)
        for k, (op, b) in enumerate(self.steps):
            text = f"{text} {op} {b}" if k == 0 else f"({text}) {op} {b}"
        return text

    def lines(self) -> list[str]:
        before = [self.start, *self.values()]
        return [
            f"{self.name} = {a} {op} {b} = {v}"
            for a, (op, b), v in zip(before[:-1], self.steps, before[1:], strict=True)
        ]


@dataclass
class Split:
    name: str
    combine: str
    children: list[Leaf | Chain | Split] = field(default_factory=list)
    restate: bool = True  # first line restates the expression (False: only the part names)

    @property
    def value(self) -> int:
        return _combine(self.combine, [c.value for c in self.children])

    @property
    def expr(self) -> str:
        if self.combine == "sum":
            return " + ".join(f"({c.expr})" for c in self.children)
        return f"{self.combine}({', '.join(c.expr for c in self.children)})"

    def lines(self) -> list[str]:
        names = [c.name for c in self.children]
        out = [f"{self.name} = {self.expr if self.restate else combine_expr(self.combine, names)}"]
        for child in self.children:
            out += child.lines()
        values = [c.value for c in self.children]
        first, *chain = combine_lines(self.combine, names, values)
        if not chain:  # 'B = B1 + B2 = 3 + 4 = 7' already states the value
            return out + [f"{self.name} = {first}"]
        return out + [f"{self.name} = {first}", *chain, f"{self.name} = {self.value}"]


def _combine(kind: str, values: list[int]) -> int:
    return sum(values) if kind == "sum" else max(values) if kind == "max" else min(values)


def combine_expr(kind: str, terms: list[str]) -> str:
    return " + ".join(terms) if kind == "sum" else f"{kind}({', '.join(terms)})"


def combine_lines(kind: str, names: list[str], values: list[int]) -> list[str]:
    """'A + B = 3 + 4 = 7' for two terms; for more, 'A + B + C = 3 + 4 + 5' then one pairwise
    step per term: '3 + 4 = 7', '7 + 5 = 12'."""
    out = [f"{combine_expr(kind, names)} = {combine_expr(kind, [str(v) for v in values])}"]
    if len(values) == 2:
        return [f"{out[0]} = {_combine(kind, values)}"]
    acc = values[0]
    for v in values[1:]:
        new = _combine(kind, [acc, v])
        out.append(f"{combine_expr(kind, [str(acc), str(v)])} = {new}")
        acc = new
    return out


@dataclass
class Task:
    prompt: str
    answer: int
    sequential: str
    multiverse: str
    meta: dict

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _leaf(rng: random.Random, name: str, k: Knobs) -> Leaf:
    op = rng.choice(k.ops)
    if op == "*":
        return Leaf(name, rng.randint(2, k.max_factor), op, rng.randint(2, k.max_factor))
    if op == "-":
        a = rng.randint(2, k.max_operand)
        return Leaf(name, a, op, rng.randint(1, a))
    return Leaf(name, rng.randint(1, k.max_operand), op, rng.randint(1, k.max_operand))


def _chain(rng: random.Random, name: str, k: Knobs) -> Chain:
    """`min_steps`..`max_steps` steps from a leaf's first operation, each op drawn among those
    that keep the value in [0, max_value] (subtraction and addition always fit one of them)."""
    first = _leaf(rng, name, k)
    steps, v = [(first.op, first.b)], first.value
    while v > k.max_value:  # a first product past the bound: start from its first operand
        first = _leaf(rng, name, k)
        steps, v = [(first.op, first.b)], first.value
    for _ in range(rng.randint(k.min_steps, k.max_steps) - 1):
        options = []
        if "*" in k.ops and 2 * v <= k.max_value and v > 1:
            top = min(k.max_factor, k.max_value // v)
            options.append(("*", rng.randint(2, top)))
        if "+" in k.ops and v + 1 <= k.max_value:
            options.append(("+", rng.randint(1, min(k.max_operand, k.max_value - v))))
        if "-" in k.ops and v >= 2:
            options.append(("-", rng.randint(1, min(k.max_operand, v))))
        if not options:
            break
        op, b = rng.choice(options)
        steps.append((op, b))
        v = _OPS[op](v, b)
    return Chain(name, first.a, steps)


def _part(
    rng: random.Random, name: str, depth: int, k: Knobs, splits: list[int]
) -> Leaf | Chain | Split:
    """A sub-problem; `splits` counts the splits made so far in this problem (capped)."""
    if depth < k.max_depth and splits[0] < k.max_splits and rng.random() < k.nest_rate:
        splits[0] += 1
        n = rng.randint(k.min_nested, k.max_nested)
        children = [_part(rng, f"{name}{i + 1}", depth + 1, k, splits) for i in range(n)]
        # a chain family's outline names the parts: their expressions are long
        return Split(name, rng.choice(k.combines), children, restate=k.max_steps == 1)
    if k.max_steps > 1:
        return _chain(rng, name, k)
    return _leaf(rng, name, k)


def make_task(seed: int | str, knobs: Knobs | None = None) -> Task:
    """One problem, a pure function of (seed, knobs)."""
    k = (knobs or Knobs()).validate()
    rng = random.Random(str(seed))
    splits = [0]
    n = rng.randint(k.min_parts, k.max_parts)
    parts = [_part(rng, _NAMES[i], 1, k, splits) for i in range(n)]
    combine = rng.choice(k.combines)
    names, values = [p.name for p in parts], [p.value for p in parts]
    answer = _combine(combine, values)
    prompt = "".join(f"{p.name} = {p.expr}\n" for p in parts)
    prompt += f"Find {combine_expr(combine, names)}.\n"
    lines = [line for p in parts for line in p.lines()]
    lines += combine_lines(combine, names, values)
    sequential = "\n".join(lines) + f"\nAnswer: {answer}\n"
    meta = {"seed": seed, "knobs": dataclasses.asdict(k)}
    return Task(prompt, answer, sequential, to_multiverse(sequential), meta)


# 3-4 paths of 5-8 dependent lines, a sub-problem splitting now and then: a held-out set's
# ceiling is about 2.0 (SmolLM2's tokenizer with the tags; the original family's: 1.25)
LONG_PATHS = Knobs(min_parts=3, max_parts=4, min_steps=5, max_steps=8, nest_rate=0.2)


def parallel_ceiling(ids: list[int], tags: dict[str, int]) -> float:
    """All tokens over the critical path (the longest chain of positions) of a Multiverse
    sequence: the speedup a parallel decoder cannot pass on it."""
    from braid.multiverse.attention import multiverse_layout

    positions, _ = multiverse_layout(ids, tags)
    return len(ids) / (int(positions.max()) + 1)


def make_tasks(count: int, seed: int = 0, knobs: Knobs | None = None) -> Iterator[Task]:
    """`count` problems; problem i depends only on (seed, i, knobs), so prefixes are stable."""
    if count < 0:
        raise InvalidRequestError(f"count must be >= 0, got {count}")
    for i in range(count):
        yield make_task(f"{seed}:{i}", knobs)


# -- answers --------------------------------------------------------------------------------

_ANSWER = re.compile(r"Answer:\s*(-?\d+)")


def extract_answer(text: str) -> int | None:
    """The integer of the last 'Answer: N' in `text`, or None if there is none."""
    found = _ANSWER.findall(text)
    return int(found[-1]) if found else None


def check_answer(text: str, answer: int) -> bool:
    return extract_answer(text) == answer


# -- rule-based converter: sequential solution -> Multiverse form ---------------------------


class ConversionError(InvalidRequestError):
    """The text is not a solution in the task family's style."""


_DEFINES = re.compile(r"^([A-Z][A-Za-z0-9_]*) = ")
_NAME = re.compile(r"\b[A-Z][A-Za-z0-9_]*\b")
_RESULT = re.compile(r" = -?\d+$")


def to_multiverse(sequential: str) -> str:
    """The Multiverse form of a solution in the task family's style.

    Rules: a named step is the span from the first to the last line that assigns its name; the
    outermost spans that touch each other and reference none of each other's names run in
    parallel (one Path each, the span's first line without its result as the Outline); the lines
    after them, which combine their results, are the Conclusion. The same rules apply inside a
    span below its first line, which gives nested blocks labelled 2.1:, 2.2:, ...
    """
    lines = [line.strip() for line in sequential.strip().splitlines() if line.strip()]
    if not lines or not re.fullmatch(r"Answer: -?\d+", lines[-1]):
        raise ConversionError("a task solution must end with a line 'Answer: N'")
    out = ["<Think>"]
    _emit(lines[:-1], "", out)
    return "\n".join([*out, "</Think>", lines[-1]]) + "\n"


def _spans(lines: list[str]) -> list[tuple[int, int]]:
    """Outermost (first, last) line spans of the names assigned in `lines`, in order."""
    where: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        m = _DEFINES.match(line)
        if m:
            where.setdefault(m.group(1), []).append(i)
    spans = sorted((idx[0], idx[-1]) for idx in where.values())
    outer: list[tuple[int, int]] = []
    for s in spans:
        if outer and s[0] <= outer[-1][1]:
            if s[1] > outer[-1][1]:  # overlapping names: no clean structure, treat as one
                outer[-1] = (outer[-1][0], s[1])
            continue
        outer.append(s)
    return outer


def _parallel_run(lines: list[str]) -> tuple[int, list[tuple[int, int]], int] | None:
    """(start, spans, end) of the first run of >= 2 adjacent, independent spans followed by
    combining lines, or None."""
    spans = _spans(lines)
    for i in range(len(spans)):
        run = [spans[i]]
        for nxt in spans[i + 1 :]:  # grow while adjacent and independent of the run so far
            if nxt[0] != run[-1][1] + 1 or not _independent(lines, [*run, nxt]):
                break
            run.append(nxt)
        end = run[-1][1] + 1
        if len(run) >= 2 and end < len(lines):
            return run[0][0], run, end
    return None


def _independent(lines: list[str], run: list[tuple[int, int]]) -> bool:
    defined = [{m.group(1) for ln in lines[a : b + 1] if (m := _DEFINES.match(ln))} for a, b in run]
    used = [{n for ln in lines[a : b + 1] for n in _NAME.findall(ln)} for a, b in run]
    return all(
        not (defined[i] & used[j]) for i in range(len(run)) for j in range(len(run)) if i != j
    )


def _emit(lines: list[str], label: str, out: list[str]) -> None:
    found = _parallel_run(lines)
    if found is None:
        out += lines
        return
    start, run, end = found
    out += lines[:start]
    out += [PARALLEL_SENTENCE, "<Parallel>", "<Goal>"]
    labels = [f"{label}{i + 1}" for i in range(len(run))]
    for lab, (a, _) in zip(labels, run):
        out += ["<Outline>", f"{lab}: {_RESULT.sub('', lines[a])}", "</Outline>"]
    out.append("</Goal>")
    for lab, (a, b) in zip(labels, run):
        out += ["<Path>", f"{lab}: {lines[a]}"]
        _emit(lines[a + 1 : b + 1], f"{lab}.", out)
        out.append("</Path>")
    out += ["<Conclusion>", *lines[end:], "</Conclusion>", "</Parallel>"]
