"""The parallelisable task family: answers recomputed from the prompt by Python's own evaluator,
every solution line re-evaluated, the Multiverse form checked with the grammar and against the
sequential form, and the converter against hand-written expected output."""

import argparse
import json
import re
import statistics
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from braid.errors import InvalidRequestError
from braid.multiverse import grammar
from braid.multiverse.tags import PARALLEL_SENTENCE, add_tags_to_tokenizer
from braid.multiverse.tasks import (
    LONG_PATHS,
    ConversionError,
    Knobs,
    check_answer,
    extract_answer,
    make_task,
    make_tasks,
    parallel_ceiling,
    to_multiverse,
)

TARGET = Path(__file__).parents[2] / "src/braid/assets/models/code-23m/tokenizer.json"
_SAFE = re.compile(r"^[A-Za-z0-9_ +\-*(),]+$")


def evaluate(expr: str, env: dict) -> int:
    """Python's evaluation of a small arithmetic expression over known names."""
    assert _SAFE.match(expr), expr
    return eval(expr, {"__builtins__": {}}, {"max": max, "min": min, **env})


def prompt_env(prompt: str) -> tuple[dict, int, list[str]]:
    """(name -> value, answer, definition lines) read from the prompt alone."""
    lines = prompt.strip().splitlines()
    env = {}
    for line in lines[:-1]:
        name, expr = line.split(" = ")
        env[name] = evaluate(expr, env)
    ask = re.fullmatch(r"Find (.+)\.", lines[-1])
    assert ask, lines[-1]
    return env, evaluate(ask.group(1), env), lines[:-1]


def check_solution_lines(text: str, truth: dict) -> None:
    """Every line is a chain of equal expressions, and every name gets its prompt value."""
    env: dict = {}
    for line in text.strip().splitlines()[:-1]:
        parts = line.split(" = ")
        defined = parts[0] if re.fullmatch(r"[A-Z]\w*", parts[0]) and len(parts) > 1 else None
        values = [evaluate(p, env) for p in (parts[1:] if defined else parts)]
        assert len(set(values)) == 1, line
        assert values[0] >= 0, line  # the family never goes below zero
        if defined:
            env[defined] = values[0]
            # sub-names (B1, B12) are not in the prompt; top-level ones must match it
            if defined in truth:
                assert values[0] == truth[defined], line


KNOB_SETS = [
    Knobs(),
    Knobs(min_parts=8, max_parts=8, nest_rate=0.0),
    Knobs(nest_rate=0.8, max_splits=3, max_depth=3, max_nested=3),
    Knobs(ops="*", combines=("max",), max_factor=12),
]


@pytest.mark.parametrize("knobs", KNOB_SETS, ids=["default", "flat8", "deep", "mul-max"])
def test_answers_and_every_step_recomputed_independently(knobs):
    for task in make_tasks(60, seed=11, knobs=knobs):
        env, answer, _ = prompt_env(task.prompt)
        assert task.answer == answer
        assert check_answer(task.sequential, answer) and check_answer(task.multiverse, answer)
        check_solution_lines(task.sequential, env)
        assert task.meta["knobs"]["nest_rate"] == knobs.nest_rate


@pytest.mark.parametrize("knobs", KNOB_SETS, ids=["default", "flat8", "deep", "mul-max"])
def test_multiverse_form_is_valid_and_the_same_reasoning(knobs):
    for task in make_tasks(60, seed=12, knobs=knobs):
        doc = grammar.parse(task.multiverse)
        # the grammar's own sequential form has exactly the lines of the sequential solution
        seq = [ln for ln in grammar.to_sequential(doc).splitlines() if ln.strip()]
        assert seq == task.sequential.strip().splitlines()
        _, _, definitions = prompt_env(task.prompt)
        top = doc.blocks()[0]
        # one outline and one path per sub-problem of the prompt, in order
        assert [o.text for o in top.outlines] == definitions
        assert [p.label for p in top.paths] == [str(i + 1) for i in range(len(definitions))]
        assert top.conclusion.splitlines()[0].startswith(task.prompt.splitlines()[-1][5:-1])
        # a block per split sub-problem: a name X that has parts X1, X2, ... in the solution
        names = re.findall(r"(?m)^([A-Z]\w*) = ", task.sequential)
        assert len(doc.blocks()) == 1 + len({n[:-1] for n in names if len(n) > 1})
        assert task.multiverse.count(PARALLEL_SENTENCE) == len(doc.blocks())
        for block in doc.blocks():
            assert_paths_independent(block)


def path_lines(items) -> list[str]:
    out = []
    for item in items:
        if isinstance(item, str):
            out += item.splitlines()
        else:
            for p in item.paths:
                out += path_lines(p.items)
            out += item.conclusion.splitlines()
    return out


def assert_paths_independent(block) -> None:
    """No path uses a name that a sibling path defines."""
    lines = [path_lines(p.items) for p in block.paths]
    defined = [{ln.split(" = ")[0] for ln in ls if " = " in ln} for ls in lines]
    used = [set(re.findall(r"\b[A-Z]\w*\b", "\n".join(ls))) for ls in lines]
    for i in range(len(lines)):
        for j in range(len(lines)):
            if i != j:
                assert not defined[i] & used[j], (lines[i], lines[j])


def test_knobs_shape_the_problems():
    for task in make_tasks(40, seed=3, knobs=Knobs(min_parts=3, max_parts=5, max_depth=1)):
        n = len(task.prompt.splitlines()) - 1
        assert 3 <= n <= 5
        assert task.multiverse.count("<Parallel>") == 1  # max_depth 1: never nested
    every = Knobs(nest_rate=1.0, max_splits=8, min_nested=2, max_nested=2)
    for task in make_tasks(10, seed=4, knobs=every):
        n = len(task.prompt.splitlines()) - 1
        assert task.multiverse.count("<Parallel>") == 1 + n
        assert task.multiverse.count("<Path>") == 3 * n
    counts = [t.multiverse.count("<Parallel>") for t in make_tasks(200, seed=5)]
    assert max(counts) == 2  # default: at most one part splits...
    assert 0.15 < sum(c == 2 for c in counts) / len(counts) < 0.75  # ...and often one does


def test_seeding_is_deterministic_and_prefix_stable():
    a = [t.as_dict() for t in make_tasks(20, seed=7)]
    assert a == [t.as_dict() for t in make_tasks(20, seed=7)]
    assert a[:5] == [t.as_dict() for t in make_tasks(5, seed=7)]
    b = [t.prompt for t in make_tasks(20, seed=8)]
    assert len(set(b) - {t["prompt"] for t in a}) >= 15
    assert a[3]["meta"]["seed"] == "7:3" and make_task("7:3").as_dict() == a[3]


def test_long_paths_answers_and_every_step_recomputed_independently():
    """Chains: each line one step on the previous value, the last one the prompt's value."""
    for task in make_tasks(60, seed=13, knobs=LONG_PATHS):
        env, answer, _ = prompt_env(task.prompt)
        assert task.answer == answer and check_answer(task.multiverse, answer)
        last: dict = {}
        for line in task.sequential.strip().splitlines()[:-1]:
            name, *parts = line.split(" = ")
            if not re.fullmatch(r"[A-Z]\w*", name):  # the final combination, no name
                parts = [name, *parts]
            known = {**env, **last}
            unknown = set(re.findall(r"\b[A-Z]\w*\b", " = ".join(parts))) - set(known)
            if unknown:  # a split's opening line names parts solved below it
                assert all(u.startswith(name) for u in unknown), line
                continue
            values = [evaluate(p, known) for p in parts]
            assert len(set(values)) == 1 and values[0] >= 0, line
            if re.fullmatch(r"[A-Z]\w*", name):
                last[name] = values[0]
        assert {k: v for k, v in last.items() if k in env} == env


def test_long_paths_are_multi_step_with_short_outlines():
    tok = Tokenizer.from_file(str(TARGET))
    tags = add_tags_to_tokenizer(tok)
    ceilings, original = [], []
    for task in make_tasks(60, seed=14, knobs=LONG_PATHS):
        doc = grammar.parse(task.multiverse)
        seq = [ln for ln in grammar.to_sequential(doc).splitlines() if ln.strip()]
        assert seq == task.sequential.strip().splitlines()
        top = doc.blocks()[0]
        assert len(top.paths) == len(task.prompt.splitlines()) - 1
        for outline, path in zip(top.outlines, top.paths, strict=True):
            lines = path_lines(path.items)
            assert len(lines) >= LONG_PATHS.min_steps, lines  # a multi-step path...
            assert len(outline.text) <= 24, outline.text  # ...behind a short outline
        for block in doc.blocks():
            assert_paths_independent(block)
        ceilings.append(parallel_ceiling(tok.encode(task.multiverse).ids, tags))
    for task in make_tasks(60, seed=14):
        original.append(parallel_ceiling(tok.encode(task.multiverse).ids, tags))
    assert statistics.median(ceilings) >= 1.8 > 1.4 > statistics.median(original)


def test_default_examples_fit_the_small_model_context():
    tok = Tokenizer.from_file(str(TARGET))
    add_tags_to_tokenizer(tok)  # each tag is one token, as in training
    lengths = [len(tok.encode(t.prompt + t.multiverse).ids) for t in make_tasks(300, seed=9)]
    assert max(lengths) <= 400, max(lengths)
    assert 120 <= statistics.median(lengths) <= 300


def test_converter_on_a_hand_written_solution():
    sequential = """A = 2 * 3 = 6
B = (1 + 1) + (4 - 2)
B1 = 1 + 1 = 2
B2 = 4 - 2 = 2
B = B1 + B2 = 2 + 2 = 4
max(A, B) = max(6, 4) = 6
Answer: 6
"""
    expected = f"""<Think>
{PARALLEL_SENTENCE}
<Parallel>
<Goal>
<Outline>
1: A = 2 * 3
</Outline>
<Outline>
2: B = (1 + 1) + (4 - 2)
</Outline>
</Goal>
<Path>
1: A = 2 * 3 = 6
</Path>
<Path>
2: B = (1 + 1) + (4 - 2)
{PARALLEL_SENTENCE}
<Parallel>
<Goal>
<Outline>
2.1: B1 = 1 + 1
</Outline>
<Outline>
2.2: B2 = 4 - 2
</Outline>
</Goal>
<Path>
2.1: B1 = 1 + 1 = 2
</Path>
<Path>
2.2: B2 = 4 - 2 = 2
</Path>
<Conclusion>
B = B1 + B2 = 2 + 2 = 4
</Conclusion>
</Parallel>
</Path>
<Conclusion>
max(A, B) = max(6, 4) = 6
</Conclusion>
</Parallel>
</Think>
Answer: 6
"""
    assert to_multiverse(sequential) == expected


def test_converter_keeps_dependent_steps_sequential():
    # B uses A: they cannot run in parallel; C and D are independent of each other
    sequential = """A = 1 + 2 = 3
B = A + 4 = 3 + 4 = 7
C = 5 + 5 = 10
D = 2 * 2 = 4
B + C + D = 7 + 10 + 4
7 + 10 = 17
17 + 4 = 21
Answer: 21
"""
    doc = grammar.parse(to_multiverse(sequential))
    (block,) = doc.blocks()
    assert [o.text for o in block.outlines] == ["B = A + 4 = 3 + 4", "C = 5 + 5", "D = 2 * 2"]
    assert doc.items[0].items[0].startswith("A = 1 + 2 = 3\n")  # before the block
    no_parallel = "A = 1 + 2 = 3\nB = A + 1 = 3 + 1 = 4\nB = 4\nAnswer: 4\n"
    assert "<Parallel>" not in to_multiverse(no_parallel)
    with pytest.raises(ConversionError, match="Answer: N"):
        to_multiverse("A = 1 + 2 = 3\n")


def test_answer_extraction():
    assert extract_answer("x\nAnswer: 42\n") == 42
    assert extract_answer("Answer: 1\nAnswer: -7") == -7  # the last one counts
    assert extract_answer("Answer: none") is None and extract_answer("") is None
    assert check_answer("Answer:12", 12) and not check_answer("Answer: 12", 13)


@pytest.mark.parametrize(
    "bad",
    [
        Knobs(min_parts=1),
        Knobs(max_parts=9),
        Knobs(min_parts=4, max_parts=3),
        Knobs(nest_rate=1.5),
        Knobs(ops="/"),
        Knobs(combines=("avg",)),
        Knobs(min_nested=1),
        Knobs(min_steps=0),
        Knobs(min_steps=4, max_steps=3),
        Knobs(max_value=10),
    ],
)
def test_bad_knobs_are_refused_with_the_reason(bad):
    with pytest.raises(InvalidRequestError, match="task knobs"):
        make_task(0, bad)


def test_make_tasks_command_writes_the_jsonl(tmp_path):
    from braid.multiverse.data_cli import add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    out = tmp_path / "tasks.jsonl"
    args = parser.parse_args(
        ["make-tasks", "--count", "5", "--seed", "3", "--out", str(out), "--max-parts", "3"]
    )
    assert args.func(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5
    for row in rows:
        assert set(row) == {"prompt", "answer", "sequential", "multiverse", "meta"}
        assert row["answer"] == prompt_env(row["prompt"])[1]
        assert row["meta"]["knobs"]["max_parts"] == 3
    args = parser.parse_args(["make-tasks", "--count", "1", "--out", str(out), "--ops", "%"])
    with pytest.raises(InvalidRequestError, match="ops"):
        args.func(args)
