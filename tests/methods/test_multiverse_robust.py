"""Multiverse under malformed structure, budgets and random fork/join/finish orders."""

from __future__ import annotations

import random

import pytest
from test_multiverse import FREE, Doc

from braid import MethodConfig, SamplingParams
from braid.multiverse import tags as T
from braid.multiverse.attention import multiverse_layout
from braid.multiverse.grammar import canonical, parse

PROMPT = "The quick brown fox"


def run(mv_llm, templates, max_tokens=200, **options):
    """Generate one request per template in one batch (greedy); returns outputs and docs."""
    docs = [Doc(mv_llm) for _ in templates]
    params = []
    for doc, make in zip(docs, templates, strict=True):
        template = make(doc)
        doc.template = template
        proc = doc.processor(template, {})
        params.append(
            SamplingParams(max_tokens=max_tokens, temperature=0, logits_processors=[proc])
        )
    prompt = mv_llm.tokenizer.encode(PROMPT)
    method = MethodConfig("multiverse", **options)
    outs = mv_llm.generate([prompt] * len(templates), params, method=method)
    return outs, docs


def well_formed(doc):
    block = doc.block(["1", "2"], [[FREE] * 3, [FREE] * 2])
    return [doc.id[T.THINK], *block, doc.id[T.THINK_END], FREE, doc.eos]


def no_outlines(doc):
    i = doc.id
    return [i[T.THINK], i[T.PARALLEL], i[T.GOAL], i[T.GOAL_END], FREE, i[T.PARALLEL_END], doc.eos]


def bad_numbering(doc):
    block = doc.block(["1", "3"], [[FREE], [FREE]])
    return [doc.id[T.THINK], *block, doc.eos]


def path_end_outside(doc):
    return [FREE, doc.id[T.PATH_END], FREE, FREE, doc.eos]


def parallel_end_in_path(doc):
    block = doc.block(["1", "2"], [[FREE, doc.id[T.PARALLEL_END], FREE], [FREE]])
    return [doc.id[T.THINK], *block, doc.eos]


def eos_in_path(doc):
    block = doc.block(["1", "2"], [[FREE, doc.eos], [FREE] * 3])
    # path 1 ends at eos, which the engine replaces with </Path>
    return [doc.id[T.THINK], *block, doc.id[T.THINK_END], FREE, doc.eos]


def nested(doc):
    inner = doc.block(["2.1", "2.2"], [[FREE] * 2, [FREE] * 2], conclusion=1)
    outer = doc.block(["1", "2"], [[FREE] * 2, [FREE, *inner, FREE]], conclusion=1)
    return [doc.id[T.THINK], *outer, doc.id[T.THINK_END], doc.eos]


MALFORMED = {
    "no_outlines": (no_outlines, "no outlines", 1),
    "bad_numbering": (bad_numbering, "not numbered", 1),
    "path_end_outside": (path_end_outside, "outside a path", 0),
    "parallel_end_in_path": (parallel_end_in_path, "closes nothing (in path 1)", 0),
    "eos_in_path": (eos_in_path, "end of sequence inside path 1: closed", 0),
}


def test_malformed_requests_fall_back_and_leave_their_batch_alone(mv_llm):
    (alone,), _ = run(mv_llm, [well_formed])
    cases = list(MALFORMED.values())
    outs, docs = run(mv_llm, [well_formed, *[c[0] for c in cases], well_formed])
    assert outs[0].token_ids == alone.token_ids == outs[-1].token_ids
    assert not outs[0].stats.warnings and outs[0].stats.paths == 2
    for out, doc, (_, warning, fallbacks) in zip(outs[1:-1], docs[1:-1], cases, strict=True):
        assert out.finish_reason == "stop", warning
        assert any(warning in w for w in out.stats.warnings), (warning, out.stats.warnings)
        assert out.stats.fallbacks == fallbacks
        if fallbacks:  # refused forks decode as plain text: the whole template in order
            assert out.stats.paths == 0
            assert len(out.token_ids) == len(doc.template)
            assert out.stats.critical_path == len(out.token_ids)


def test_too_many_paths_and_too_deep_nesting_decode_sequentially(mv_llm):
    outs, _ = run(mv_llm, [well_formed, nested], max_paths=1)
    for out in outs:
        assert out.stats.fallbacks == 1 and out.stats.paths == 0, out.stats.warnings
        assert "more than the cap" in out.stats.warnings[0]
    (deep,), docs = run(mv_llm, [nested], max_depth=1)
    assert deep.stats.fallbacks == 1 and deep.stats.paths == 2 and deep.stats.blocks == 1
    assert "nesting deeper" in deep.stats.warnings[0]
    assert deep.finish_reason == "stop" and len(deep.token_ids) == len(docs[0].template)


@pytest.mark.parametrize("budget", ["critical", "total"])
def test_budgets_end_a_request_cleanly_inside_an_open_block(mv_llm, budget):
    doc = Doc(mv_llm)
    template = [doc.id[T.THINK], *doc.block(["1", "2", "3"], [[FREE] * 30] * 3), doc.eos]
    limit = 40
    params = SamplingParams(
        max_tokens=limit if budget == "critical" else 500,
        max_total_tokens=limit if budget == "total" else None,
        temperature=0,
        logits_processors=[doc.processor(template, {})],
    )
    (out,) = mv_llm.generate([mv_llm.tokenizer.encode(PROMPT)], params, method="multiverse")
    assert out.finish_reason == "length"
    assert any("still open" in w for w in out.stats.warnings)
    if budget == "critical":
        assert out.stats.critical_path == limit and len(out.token_ids) > limit
    else:
        assert len(out.token_ids) == limit and out.stats.critical_path < limit


def random_template(rng: random.Random, doc: Doc, depth: int = 0, prefix: str = "") -> list:
    """A random nested block: 1-4 paths of random length, nesting at random."""
    n = rng.randint(1, 4)
    labels = [f"{prefix}{k}" for k in range(1, n + 1)]
    contents = []
    for label in labels:
        content = [FREE] * rng.randint(0, 4)
        if depth < 2 and rng.random() < 0.3:
            content += random_template(rng, doc, depth + 1, f"{label}.")
        contents.append(content + [FREE] * rng.randint(0, 2))
    return doc.block(labels, contents, conclusion=rng.randint(0, 2))


def test_random_fork_join_finish_orders_return_all_storage(mv_llm):
    """Random structures and budgets, 6 requests through 3 slots: every graph is freed once."""
    rng = random.Random(0)
    docs, params, lens = [], [], []
    for _ in range(6):
        doc = Doc(mv_llm)
        template = [FREE, *random_template(rng, doc), FREE, doc.eos]
        docs.append(template)
        params.append(
            SamplingParams(
                max_tokens=rng.choice([8, 25, 300]),
                temperature=1.0,
                seed=rng.randint(0, 99),
                logits_processors=[doc.processor(template, {})],
            )
        )
        lens.append(len(template))
    engine = mv_llm._engine("multiverse")
    engine.max_batch = 3
    prompt = mv_llm.tokenizer.encode(PROMPT)
    outs = engine.generate([prompt] * 6, params)
    pool = engine.pool
    assert pool.live_slots == 0 and pool.allocations == pool.releases == 6
    assert not engine.method.states
    for out, n, sp in zip(outs, lens, params, strict=True):
        assert out.stats.critical_path <= sp.max_tokens
        if out.finish_reason == "stop":
            assert len(out.token_ids) == n and not out.stats.warnings


def test_paths_may_hold_more_tokens_than_the_context_has_positions(mv_llm):
    """Siblings share positions, not cache rows: 4 paths x 80 tokens pass a 256-token context."""
    doc = Doc(mv_llm)
    template = [doc.id[T.THINK], *doc.block(["1", "2", "3", "4"], [[FREE] * 80] * 4), doc.eos]
    params = SamplingParams(
        max_tokens=250, temperature=0, logits_processors=[doc.processor(template, {})]
    )
    (out,) = mv_llm.generate([mv_llm.tokenizer.encode(PROMPT)], params, method="multiverse")
    context = mv_llm.model.config.max_position_embeddings
    assert out.finish_reason == "stop" and not out.stats.warnings
    assert len(out.token_ids) == len(template) > context > out.stats.critical_path


def test_eos_in_a_path_closes_it_so_the_output_keeps_the_training_layout(mv_llm):
    (out,), _ = run(mv_llm, [eos_in_path])
    assert out.finish_reason == "stop" and out.stats.paths == 2
    parse(out.text)  # valid structure: the path was closed with </Path>
    ids = mv_llm.tokenizer.encode(PROMPT) + out.token_ids
    multiverse_layout(ids, Doc(mv_llm).id)  # raises on a layout training could not have


@pytest.mark.parametrize("limit", [36, 45, 60])
def test_a_budget_cut_still_streams_every_line_of_the_final_text(mv_llm, limit):
    doc = Doc(mv_llm)
    template = [doc.id[T.THINK], *nested(doc), doc.eos]
    params = SamplingParams(
        max_tokens=500,
        max_total_tokens=limit,
        temperature=0,
        logits_processors=[doc.processor(template, {})],
    )
    chunks = list(mv_llm.stream(mv_llm.tokenizer.encode(PROMPT), params, method="multiverse"))
    final = mv_llm.last_stream_output
    assert final.finish_reason == "length"
    assert sorted(canonical("".join(chunks)).splitlines()) == sorted(final.text.splitlines())
