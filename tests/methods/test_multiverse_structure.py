"""Structure the training layout refuses, the engine refuses: random tag sequences, forced.

Each request forces a random (often malformed) tagged token sequence through the engine. The
engine reports which tags it decoded as text; the reference is `multiverse_layout`, which must
accept the output with those tags read as text, and one `transformers` pass over the output
with that layout's mask and positions must give the logits the engine sampled from at every
step. So every fork, join and path end the engine performed is one training accepts, at the
training positions and visibility, and everything else was decoded sequentially.
"""

from __future__ import annotations

import random

import pytest
import torch
from test_multiverse import FREE, Doc

from braid import SamplingParams
from braid.multiverse import tags as T
from braid.multiverse.attention import multiverse_layout
from braid.multiverse.branch import structural

PROMPT = "The quick brown fox"
MAX_TOKENS, MAX_TOTAL = 120, 260


class Script:
    """Forces `template` by where a branch stands in it (found from the tokens it sees, with a
    jump at each forced path head); a branch that leaves the template gets end of sequence."""

    def __init__(self, doc: Doc, template: list[int]):
        self.doc, self.template, self.record = doc, template, {}
        self.banned = torch.tensor([*doc.id.values(), doc.eos])
        self.heads = {tuple(h) for h in doc.path_heads}

    def where(self, ctx: list[int]) -> int | None:
        t, m, template = 0, 0, self.template
        while m < len(ctx):
            if ctx[m] == self.doc.id[T.PATH]:
                head = next((h for h in self.heads if tuple(ctx[m : m + len(h)]) == h), None)
                if head is not None:
                    t = _find(template, list(head), t)
                    if t is None:
                        return None
            if t >= len(template) or template[t] not in (FREE, ctx[m]):
                return None
            m, t = m + 1, t + 1
        return t

    def __call__(self, ctx: list[int], logits: torch.Tensor) -> torch.Tensor:
        self.record[tuple(ctx)] = logits.clone()
        t = self.where(ctx)
        out = logits.clone()
        if t is not None and t < len(self.template) and self.template[t] == FREE:
            out[self.banned] = float("-inf")
        else:
            out.fill_(float("-inf"))
            out[self.doc.eos if t is None or t >= len(self.template) else self.template[t]] = 0.0
        return out


def _find(seq: list[int], sub: list[int], start: int) -> int | None:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    return None


# -- random templates -------------------------------------------------------------------------
def block(rng: random.Random, doc: Doc, depth: int, prefix: str, odd: bool) -> list[int]:
    """A block with 1-3 paths; `odd` puts nested blocks where training refuses them too."""
    i = doc.id
    labels = [f"{prefix}{k}" for k in range(1, rng.randint(1, 3) + 1)]
    t = [i[T.PARALLEL], i[T.GOAL]]
    for label in labels:
        t += [i[T.OUTLINE], *doc.enc(f"{label}: go"), i[T.OUTLINE_END]]
        if odd and depth < 2 and rng.random() < 0.15:  # a block inside the Goal
            t += block(rng, doc, depth + 1, f"{label}.", odd)
    t.append(i[T.GOAL_END])
    for label in labels:
        head = [i[T.PATH], *doc.enc(f"{label}:")]
        doc.path_heads.append(head)
        t += head + [FREE] * rng.randint(0, 3)
        if depth < 2 and rng.random() < 0.3:
            t += block(rng, doc, depth + 1, f"{label}.", odd)
        t += [FREE] * rng.randint(0, 2) + [i[T.PATH_END]]
    t += [i[T.CONCLUSION], *[FREE] * rng.randint(0, 2)]
    if odd and depth < 2 and rng.random() < 0.2:  # a block inside the Conclusion
        t += block(rng, doc, depth + 1, "", odd)
    return t + [i[T.CONCLUSION_END], i[T.PARALLEL_END]]


def mutate(rng: random.Random, doc: Doc, t: list[int]) -> list[int]:
    """Insert a random tag, delete a token, or drop a nested block's end (`</Conclusion>`...)."""
    t = list(t)
    kind = rng.choice(["insert", "delete", "unclosed"])
    if kind == "insert":
        t.insert(rng.randrange(len(t) + 1), rng.choice([*doc.id.values(), doc.eos]))
    elif kind == "delete" and t:
        del t[rng.randrange(len(t))]
    else:
        ends = [k for k, x in enumerate(t) if x == doc.id[T.CONCLUSION_END]]
        if ends:
            k = rng.choice(ends)
            del t[k : k + rng.randint(1, 2)]
    return t


def random_case(rng: random.Random, doc: Doc) -> tuple[list[int], bool]:
    """A template and whether it is well formed (no mutation, no odd nesting)."""
    mutated = rng.random() < 0.7
    odd = mutated and rng.random() < 0.5
    t = [FREE, *block(rng, doc, 0, "", odd), FREE]
    if rng.random() < 0.3:
        t += block(rng, doc, 0, "", odd)
    if mutated:
        for _ in range(rng.randint(1, 3)):
            t = mutate(rng, doc, t)
    return t + [FREE, doc.eos], not mutated


# -- running and checking ---------------------------------------------------------------------
def generate(mv_llm, monkeypatch, templates: list[list[int]], temperature: float = 0.0):
    """Outputs, scripts and the views of each output (see `capture`)."""
    engine = mv_llm._engine("multiverse")
    text_id = mv_llm.tokenizer.encode("x", special=False)[0]
    views: dict[int, tuple[list[int], ...]] = {}
    release = engine.method.release

    def capture(request):
        trunk, tags = engine.method.states[request.id].trunk, engine.method.tags
        views[request.id] = (
            structural(trunk, tags, None),  # the output as it is
            structural(trunk, tags, None, close=True),  # paths a budget cut short closed
            structural(trunk, tags, text_id, close=True),  # ... and tags read as text
        )
        release(request)

    monkeypatch.setattr(engine.method, "release", capture)
    scripts, params = [], []
    for k, (doc, template) in enumerate(templates):
        script = Script(doc, template)
        scripts.append(script)
        params.append(
            SamplingParams(
                max_tokens=MAX_TOKENS,
                max_total_tokens=MAX_TOTAL,
                temperature=temperature,
                seed=k,
                logits_processors=[script],
            )
        )
    prompt = mv_llm.tokenizer.encode(PROMPT)
    outs = engine.generate([prompt] * len(templates), params)
    order = sorted(views)  # request ids grow in submission order
    assert len(order) == len(outs)
    return prompt, outs, scripts, [views[i] for i in order]


def check(mv_dir, prompt, out, script, views, tags) -> None:
    from helpers import hf_masked_logits, hf_model

    plain, closed, view = views
    assert out.finish_reason in ("stop", "length")
    assert len(out.token_ids) <= MAX_TOTAL and out.stats.critical_path <= MAX_TOKENS
    assert out.stats.passes <= len(out.token_ids) + 1  # no pass without progress: no hang
    assert plain == out.token_ids
    if out.finish_reason == "stop":
        assert closed == plain  # nothing was cut short
    tag_ids = set(tags.values())
    # only tags are ever read as text, and never without a warning
    assert len(view) == len(closed)
    assert all(v == o or o in tag_ids for v, o in zip(view, closed, strict=True))
    if view != closed:
        assert out.stats.warnings
    positions, visible = multiverse_layout(prompt + view, tags)  # raises if training refuses
    ids = prompt + closed
    logits = hf_masked_logits(_model(mv_dir, hf_model), ids, positions.tolist(), visible)
    n, matched = len(prompt), set()
    for i in range(n - 1, len(ids)):
        ctx = tuple(ids[j] for j in range(n, i + 1) if visible[i, j])
        if ctx in script.record:
            torch.testing.assert_close(script.record[ctx], logits[i], atol=1e-4, rtol=1e-4)
            matched.add(ctx)
    assert matched == set(script.record)  # every sampled row has its training counterpart


_models: dict = {}


def _model(mv_dir, hf_model):
    if mv_dir not in _models:
        _models[mv_dir] = hf_model(mv_dir)
    return _models[mv_dir]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_random_tag_sequences_keep_the_training_layout(mv_llm, mv_dir, monkeypatch, temperature):
    rng = random.Random(17 + int(temperature))
    cases = []
    for _ in range(24):
        doc = Doc(mv_llm)
        template, well_formed = random_case(rng, doc)
        cases.append((doc, template, well_formed))
    prompt, outs, scripts, views = generate(
        mv_llm, monkeypatch, [(d, t) for d, t, _ in cases], temperature
    )
    forked_despite_errors = 0
    for (doc, template, well_formed), out, script, view in zip(
        cases, outs, scripts, views, strict=True
    ):
        check(mv_dir, prompt, out, script, view, doc.id)
        if well_formed and out.finish_reason == "stop":
            assert not out.stats.warnings and view[2] == out.token_ids
            assert len(template) == len(out.token_ids)
            assert all(t in (FREE, o) for t, o in zip(template, out.token_ids, strict=True))
            assert out.stats.paths == template.count(doc.id[T.PATH])
        if not well_formed and out.stats.blocks and view[2] != view[1]:
            forked_despite_errors += 1
    assert forked_despite_errors >= 3  # the generator really mixes forks with refusals


# -- the cases found in review ------------------------------------------------------------------
def _blocks(doc: Doc, labels, contents, conclusion=None) -> list[int]:
    """Doc.block with an explicit conclusion content."""
    t = doc.block(labels, contents, conclusion=0)
    if conclusion is not None:
        t[-2:-2] = conclusion  # before </Conclusion></Parallel>
    return t


def fork_in_conclusion(doc: Doc) -> list[int]:
    inner = doc.block(["1"], [[FREE]], conclusion=1)
    return [*_blocks(doc, ["1", "2"], [[FREE], [FREE]], [FREE, *inner, FREE]), doc.eos]


def fork_in_open_goal(doc: Doc) -> list[int]:
    i = doc.id
    inner = doc.block(["1"], [[FREE]], conclusion=1)
    goal = [i[T.PARALLEL], i[T.GOAL], i[T.OUTLINE], *doc.enc("1: a"), i[T.OUTLINE_END], *inner]
    return [*goal, i[T.GOAL_END], FREE, i[T.PARALLEL_END], FREE, doc.eos]


def path_end_in_nested_conclusion(doc: Doc) -> list[int]:
    inner = doc.block(["2.1", "2.2"], [[FREE], [FREE]], conclusion=1)[:-2]  # no closing tags
    outer = doc.block(["1", "2"], [[FREE], [FREE, *inner]], conclusion=1)
    return [*outer, FREE, doc.eos]


def refused_nested_fork(doc: Doc) -> list[int]:
    inner = doc.block(["2.1", "2.3"], [[FREE], [FREE]], conclusion=1)[:-1]  # no </Parallel>
    outer = doc.block(["1", "2"], [[FREE], [FREE, *inner, FREE]], conclusion=1)
    return [*outer, FREE, doc.eos]


def stray_parallel_end(doc: Doc) -> list[int]:
    return [FREE, doc.id[T.PARALLEL_END], *doc.block(["1", "2"], [[FREE], [FREE]]), doc.eos]


REVIEW = {
    # template, warning, blocks forked, paths
    "fork_in_conclusion": (fork_in_conclusion, "<Parallel> inside <Conclusion>", 1, 2),
    "fork_in_open_goal": (fork_in_open_goal, "<Parallel> inside <Goal>", 0, 0),
    "path_end_in_nested_conclusion": (
        path_end_in_nested_conclusion,
        "</Path> inside an open <Conclusion>: close that block first (in path 2)",
        2,
        4,
    ),
    "refused_nested_fork": (refused_nested_fork, "not numbered", 1, 2),
    "stray_parallel_end": (stray_parallel_end, "</Parallel> closes nothing (in the trunk)", 1, 2),
}


@pytest.mark.parametrize("name", list(REVIEW))
def test_review_cases_are_refused_as_training_refuses_them(mv_llm, mv_dir, monkeypatch, name):
    make, warning, blocks, paths = REVIEW[name]
    doc = Doc(mv_llm)
    template = make(doc)
    prompt, (out,), (script,), (view,) = generate(mv_llm, monkeypatch, [(doc, template)])
    check(mv_dir, prompt, out, script, view, doc.id)
    assert any(warning in w for w in out.stats.warnings), out.stats.warnings
    assert (out.stats.blocks, out.stats.paths) == (blocks, paths)
    if name != "path_end_in_nested_conclusion":  # that path cannot end: budget or eos ends it
        assert out.finish_reason == "stop" and len(out.token_ids) == len(template)
        assert all(t in (FREE, o) for t, o in zip(template, out.token_ids, strict=True))
