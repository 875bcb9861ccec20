"""The Multiverse text grammar: trees of valid documents, errors with positions, canonical form."""

from __future__ import annotations

import pytest

from braid.errors import InvalidRequestError
from braid.multiverse.grammar import (
    Block,
    Document,
    GrammarError,
    Outline,
    PathNode,
    Think,
    canonical,
    errors,
    parse,
    serialize,
    to_sequential,
)

# messy whitespace on purpose: it is insignificant around tags
FLAT = """What is 3^2 + 4^2?
<Think>   I need two squares. Let's think in parallel.
<Parallel><Goal>
  <Outline>1: square 3</Outline>
  <Outline>
2:square 4
  </Outline>
</Goal>
<Path>
1: 3^2 = 9
</Path><Path>2 : 4^2 = 16</Path>
<Conclusion>
9 + 16 = 25
</Conclusion>
</Parallel>
So the answer is 25.
</Think>
**25**"""

FLAT_TREE = Document(
    [
        "What is 3^2 + 4^2?",
        Think(
            [
                "I need two squares. Let's think in parallel.",
                Block(
                    [Outline("1", "square 3"), Outline("2", "square 4")],
                    [PathNode("1", ["3^2 = 9"]), PathNode("2", ["4^2 = 16"])],
                    "9 + 16 = 25",
                ),
                "So the answer is 25.",
            ]
        ),
        "**25**",
    ]
)

FLAT_CANONICAL = """What is 3^2 + 4^2?
<Think>
I need two squares. Let's think in parallel.
<Parallel>
<Goal>
<Outline>
1: square 3
</Outline>
<Outline>
2: square 4
</Outline>
</Goal>
<Path>
1: 3^2 = 9
</Path>
<Path>
2: 4^2 = 16
</Path>
<Conclusion>
9 + 16 = 25
</Conclusion>
</Parallel>
So the answer is 25.
</Think>
**25**"""

NESTED = """<Think>
Let's think in parallel.
<Parallel>
<Goal>
<Outline>
1: a
</Outline>
<Outline>
2: b, in two parts
</Outline>
</Goal>
<Path>
1: a = 1
</Path>
<Path>
2: b needs c and d.
Let's think in parallel.
<Parallel>
<Goal>
<Outline>
2.1: c
</Outline>
<Outline>
2.2: d
</Outline>
</Goal>
<Path>
2.1: c = 2
</Path>
<Path>
2.2:
<Parallel>
<Goal>
<Outline>
2.2.1: d itself
</Outline>
</Goal>
<Path>
2.2.1: d = 3
</Path>
<Conclusion>
d = 3
</Conclusion>
</Parallel>
</Path>
<Conclusion>
b = c + d = 5
</Conclusion>
</Parallel>
So b = 5.
</Path>
<Conclusion>
a + b = 6
</Conclusion>
</Parallel>
</Think>
6"""

NESTED_TREE = Document(
    [
        Think(
            [
                "Let's think in parallel.",
                Block(
                    [Outline("1", "a"), Outline("2", "b, in two parts")],
                    [
                        PathNode("1", ["a = 1"]),
                        PathNode(
                            "2",
                            [
                                "b needs c and d.\nLet's think in parallel.",
                                Block(
                                    [Outline("2.1", "c"), Outline("2.2", "d")],
                                    [
                                        PathNode("2.1", ["c = 2"]),
                                        PathNode(
                                            "2.2",
                                            [
                                                Block(
                                                    [Outline("2.2.1", "d itself")],
                                                    [PathNode("2.2.1", ["d = 3"])],
                                                    "d = 3",
                                                )
                                            ],
                                        ),
                                    ],
                                    "b = c + d = 5",
                                ),
                                "So b = 5.",
                            ],
                        ),
                    ],
                    "a + b = 6",
                ),
            ]
        ),
        "6",
    ]
)

SEVERAL = """Q
<Think>
<Parallel><Goal><Outline>1: x</Outline></Goal><Path>1: x!</Path><Conclusion>one</Conclusion>
</Parallel>
between
<Parallel><Goal><Outline>1: y</Outline><Outline>2: z</Outline><Outline>3: w</Outline></Goal>
<Path>1: Y</Path><Path>2: Z</Path><Path>3: W</Path><Conclusion>three</Conclusion></Parallel>
</Think>
<Think>again</Think>"""

SEVERAL_TREE = Document(
    [
        "Q",
        Think(
            [
                Block([Outline("1", "x")], [PathNode("1", ["x!"])], "one"),
                "between",
                Block(
                    [Outline("1", "y"), Outline("2", "z"), Outline("3", "w")],
                    [PathNode("1", ["Y"]), PathNode("2", ["Z"]), PathNode("3", ["W"])],
                    "three",
                ),
            ]
        ),
        Think(["again"]),
    ]
)


@pytest.mark.parametrize(
    "text, tree",
    [
        (FLAT, FLAT_TREE),
        (NESTED, NESTED_TREE),
        (SEVERAL, SEVERAL_TREE),
        ("plain text, no structure", Document(["plain text, no structure"])),
        ("", Document([])),
    ],
)
def test_valid_documents_parse_to_the_expected_tree(text, tree):
    assert parse(text) == tree
    assert errors(text) == []
    assert serialize(parse(text)) == canonical(text)
    assert serialize(tree) == canonical(text)
    assert parse(canonical(text)) == tree


def test_canonical_literal_and_offsets():
    assert canonical(FLAT) == FLAT_CANONICAL
    assert canonical(FLAT_CANONICAL) == FLAT_CANONICAL
    assert serialize(NESTED_TREE) == NESTED  # NESTED is written canonically
    block = parse(FLAT).items[1].items[1]
    assert FLAT[block.offset :].startswith("<Parallel>")
    assert FLAT[block.paths[1].offset :].startswith("<Path>2 :")
    assert FLAT[block.outlines[1].offset :].startswith("<Outline>\n2:square")
    assert [len(b.paths) for b in parse(NESTED).blocks()] == [2, 2, 1]


def test_canonical_of_malformed_text():
    messy = "  intro <Path>1:x </Parallel>  tail <Goal><Outline>  2.1 :y\nz</Outline> <Oops>"
    assert canonical(messy) == (
        "intro\n<Path>\n1: x\n</Parallel>\ntail\n<Goal>\n<Outline>\n2.1: y\nz\n</Outline>\n<Oops>"
    )
    assert errors(messy) != []


# (text, line, column, what): positions worked out by hand
INVALID = [
    ("<Parallel>", 1, 1, "<Parallel> must be inside <Think> or a <Path>"),
    ("a\n  <Goal>", 2, 3, "<Goal> is only allowed inside a <Parallel> block"),
    ("text </Think>", 1, 6, "</Think> closes nothing: no <Think> is open"),
    ("<Think>\nabc", 1, 1, "<Think> is never closed (add </Think>)"),
    ("<Think>\n<Think>", 2, 1, "<Think> is not allowed inside <Think>"),
    (
        "<Think>\n</Path>",
        2,
        1,
        "</Path> found while <Think> (opened at line 1, column 1) is still open",
    ),
    ("<Think>\n<Parallel>\n<Path>", 3, 1, "<Parallel> must start with <Goal>, found <Path>"),
    ("<Think>\n<Parallel>\n<Goal>\n</Goal>", 4, 1, "<Goal> has no <Outline>: add at least one"),
    (
        "<Think>\n<Parallel>\n<Goal>\n  oops <Outline>",
        4,
        3,
        "text is not allowed directly inside <Goal> (only <Outline>s)",
    ),
    (
        "<Think><Parallel> hm <Goal>",
        1,
        19,
        "text is not allowed directly inside <Parallel> (only <Goal>, <Path>s and <Conclusion>)",
    ),
    (
        "<Think><Parallel><Goal><Outline>1: a <Parallel>",
        1,
        38,
        "<Parallel> is not allowed inside <Outline>; it belongs in <Think> or a <Path>",
    ),
    (
        "<Think><Parallel><Goal>\n<Outline>2: a</Outline></Goal><Path>2: a</Path>"
        "<Conclusion>c</Conclusion></Parallel></Think>",
        2,
        1,
        "outline label '2' should be '1'",
    ),
    (
        "<Think><Parallel><Goal>\n<Outline>one thing</Outline></Goal><Path>1: a</Path>"
        "<Conclusion>c</Conclusion></Parallel></Think>",
        2,
        1,
        "outline has no label: start it with '1:'",
    ),
    (
        "<Think><Parallel><Goal><Outline>1: a</Outline><Outline>2: b</Outline></Goal>\n"
        "<Path>1: a</Path>\n<Path>3: b</Path><Conclusion>c</Conclusion></Parallel></Think>",
        3,
        1,
        "path label '3' should be '2'",
    ),
    (
        "<Think><Parallel><Goal><Outline>1: a</Outline></Goal>\n"
        "<Path>\nfirst a</Path><Conclusion>c</Conclusion></Parallel></Think>",
        2,
        1,
        "path has no label: start it with '1:'",
    ),
    (
        "<Think><Parallel><Goal><Outline>1: a</Outline></Goal>\n"
        "<Path>1: a</Path> <Path>2: b</Path><Conclusion>c</Conclusion></Parallel></Think>",
        2,
        19,
        "path 2 has no matching <Outline> (the <Goal> has 1)",
    ),
    (
        "<Think><Parallel><Goal><Outline>1: a</Outline><Outline>2: b</Outline></Goal>\n"
        "<Path>1: a</Path>\n <Conclusion>c</Conclusion></Parallel></Think>",
        3,
        2,
        "<Conclusion> after 1 path(s), but the <Goal> has 2 outlines: "
        "write one <Path> per <Outline>",
    ),
    (
        "<Think><Parallel><Goal><Outline>1: a</Outline></Goal>\n<Conclusion>",
        2,
        1,
        "<Conclusion> before any <Path>",
    ),
    (
        "<Think><Parallel><Goal><Outline>1: a</Outline></Goal><Path>1: a</Path>\n</Parallel>",
        2,
        1,
        "<Parallel> must end with a <Conclusion> before </Parallel>",
    ),
    (
        "<Think><Parallel><Goal><Outline>1: a</Outline></Goal><Path>1: a</Path>"
        "<Conclusion>c</Conclusion>\n<Path>",
        2,
        1,
        "<Path> after <Conclusion>: the <Conclusion> must come last",
    ),
    (
        "<Think><Parallel><Goal><Outline>1: a</Outline></Goal><Path>1: a</Path>"
        "<Conclusion>c</Conclusion>\nlate</Parallel>",
        2,
        1,
        "text is not allowed directly inside <Parallel> (<Conclusion> comes last)",
    ),
    (
        "<Think><Parallel><Goal><Outline>1: a</Outline></Goal><Path>1: a</Path>"
        "<Conclusion>\nc <Parallel>",
        2,
        3,
        "<Parallel> is not allowed inside <Conclusion>; it belongs in <Think> or a <Path>",
    ),
    (
        "<Think>\n<Parallel><Goal><Outline>1: a</Outline></Goal><Path>1: a\n</Parallel>",
        3,
        1,
        "</Parallel> found while <Path> (opened at line 2, column 47) is still open",
    ),
    (
        "<Think><Parallel><Goal><Outline>1: a</Outline><Outline>2: b</Outline></Goal>"
        "<Path>1: a</Path><Path>2: b <Parallel><Goal>\n<Outline>1: c</Outline></Goal>"
        "<Path>2.1: c</Path><Conclusion>c</Conclusion></Parallel></Path>"
        "<Conclusion>c</Conclusion></Parallel></Think>",
        2,
        1,
        "outline label '1' should be '2.1'",
    ),
    (
        "<Think><Parallel><Goal><Outline>1: a</Outline></Goal><Path>1: a</Path>"
        "<Conclusion>c</Conclusion></Parallel>",
        1,
        1,
        "<Think> is never closed (add </Think>)",
    ),
]


@pytest.mark.parametrize("text, line, column, what", INVALID)
def test_invalid_documents_report_the_position(text, line, column, what):
    with pytest.raises(GrammarError) as e:
        parse(text)
    err = e.value
    assert (err.line, err.column, err.what) == (line, column, what)
    assert str(err) == f"line {line}, column {column}: {what}"
    assert isinstance(err, InvalidRequestError)
    lines = text.split("\n")
    assert sum(len(s) + 1 for s in lines[: line - 1]) + column - 1 == err.offset
    assert [(x.line, x.column) for x in errors(text)][0] == (line, column)


def test_errors_lists_every_numbering_error():
    text = (
        "<Think>\n<Parallel>\n<Goal>\n<Outline>1: a</Outline>\n<Outline>3: b</Outline>\n</Goal>\n"
        "<Path>1: a</Path>\n<Path>5: b</Path>\n<Conclusion>c</Conclusion>\n</Parallel>\n"
        "<Parallel>\n</Think>"
    )
    found = [(e.line, e.column, e.what) for e in errors(text)]
    assert found == [
        (5, 1, "outline label '3' should be '2'"),
        (8, 1, "path label '5' should be '2'"),
        (12, 1, "<Parallel> must start with <Goal>, found </Think>"),
    ]
    with pytest.raises(GrammarError, match="line 5, column 1: outline label '3' should be '2'"):
        parse(text)


def test_to_sequential_worked_example():
    assert to_sequential(NESTED) == (
        "a = 1\n\nb needs c and d.\n\nc = 2\n\nd = 3\n\nd = 3\n\nb = c + d = 5\n\n"
        "So b = 5.\n\na + b = 6\n\n6"
    )
    assert to_sequential(FLAT) == (
        "What is 3^2 + 4^2?\n\nI need two squares.\n\n3^2 = 9\n\n4^2 = 16\n\n9 + 16 = 25\n\n"
        "So the answer is 25.\n\n**25**"
    )
    assert to_sequential(parse(FLAT)) == to_sequential(FLAT)
    with pytest.raises(GrammarError):
        to_sequential("<Think>")
