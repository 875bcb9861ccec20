"""The token graph: forks, joins, truncation and compaction against independent fresh runs."""

import random

import pytest
import torch
from helpers import hf_masked_logits, hf_model

from braid.cache import KVPool
from braid.model import load_model
from braid.model.batch import Append, build_batch


@pytest.fixture(scope="module")
def model(llama_dir):
    return load_model(llama_dir, "fp32")[0]


def run(model, appends):
    logits, _ = model.forward(build_batch(appends, model.windows))
    return logits


def fresh(model, ids, positions=None):
    """Logits of a plain causal run of one sequence in a new pool: the independent reference."""
    pool = model.new_pool(1)
    g = pool.new_graph()
    return run(model, [Append(g, ids, positions if positions is not None else range(len(ids)))])


def close(a, b):
    return torch.allclose(a, b, atol=1e-5, rtol=1e-4)


PREFIX = [3, 14, 15, 92, 65, 35]


def test_forked_branches_equal_running_each_branch_alone(model):
    pool = model.new_pool(2)
    g = pool.new_graph()
    run(model, [Append(g, PREFIX, range(6))])
    a, b = g.fork(0, 2)
    # siblings restart at the same positions; both go in one pass
    branch_a, branch_b = [7, 8, 9], [21, 22]
    logits = run(model, [Append(g, branch_a + branch_b, [6, 7, 8, 6, 7], [a] * 3 + [b] * 2)])
    assert close(logits[:3], fresh(model, PREFIX + branch_a)[6:])
    assert close(logits[3:], fresh(model, PREFIX + branch_b)[6:])
    # decoding continues independently on each branch
    step = run(model, [Append(g, [40, 41], [9, 8], [a, b])])
    assert close(step[0], fresh(model, PREFIX + branch_a + [40])[-1])
    assert close(step[1], fresh(model, PREFIX + branch_b + [41])[-1])


def test_join_sees_every_parent_and_their_ancestors(model, llama_dir):
    pool = model.new_pool(1)
    g = pool.new_graph()
    first = run(model, [Append(g, PREFIX, range(6))])
    a, b = g.fork(0, 2)
    paths = run(model, [Append(g, [7, 8, 21, 22], [6, 7, 6, 7], [a, a, b, b])])
    j = g.join([a, b])
    joined = run(model, [Append(g, [50, 51], [8, 9], j)])
    ours = torch.cat([first, paths, joined])

    # reference: transformers over the flattened sequence with the visibility written by hand:
    # causal, except that path b (rows 8-9) cannot see path a (rows 6-7)
    ids = PREFIX + [7, 8, 21, 22, 50, 51]
    pos = list(range(6)) + [6, 7, 6, 7, 8, 9]
    visible = torch.ones(12, 12, dtype=torch.bool).tril()
    visible[8:10, 6:8] = False
    ref = hf_masked_logits(hf_model(llama_dir), ids, pos, visible)
    assert close(ours, ref)
    assert torch.equal(g.visibility(torch.arange(12), 12), visible)


def test_truncate_then_reappend_equals_never_appending(model):
    pool = model.new_pool(1)
    g = pool.new_graph()
    run(model, [Append(g, PREFIX, range(6))])
    run(model, [Append(g, [100, 101, 102, 103], range(6, 10))])
    g.truncate(7)
    logits = run(model, [Append(g, [55, 56], [7, 8])])
    assert close(logits, fresh(model, PREFIX + [100, 55, 56])[7:])


def test_keep_equals_a_fresh_run_of_the_kept_path(model):
    pool = model.new_pool(1)
    g = pool.new_graph()
    run(model, [Append(g, PREFIX, range(6))])
    # a small tree: two depth-1 nodes, then a child under the second
    a, b = g.fork(0, 2)
    run(model, [Append(g, [7, 21], [6, 6], [a, b])])
    (c,) = g.fork(b, 1)
    run(model, [Append(g, [33], [7], c)])
    g.keep(torch.tensor([0, 1, 2, 3, 4, 5, 7, 8]))  # prefix, node b, node c
    assert g.length == 8
    logits = run(model, [Append(g, [44], [8], c)])
    assert close(logits[0], fresh(model, PREFIX + [21, 33, 44])[-1])


def test_fork_and_join_do_not_copy_storage(model):
    pool = model.new_pool(2)
    g = pool.new_graph()
    run(model, [Append(g, PREFIX, range(6))])
    before = pool.used_tokens()
    kids = g.fork(0, 4)
    assert pool.used_tokens() == before == 6
    run(model, [Append(g, [1, 2, 3, 4], [6] * 4, kids)])
    assert pool.used_tokens() == 10  # only the new tokens
    g.join(kids)
    assert pool.used_tokens() == 10


def test_a_forked_segment_grows_only_before_its_branches(model, llama_dir):
    pool = model.new_pool(1)
    g = pool.new_graph()
    run(model, [Append(g, PREFIX[:4], range(4))])
    a, b = g.fork(0, 2)
    # one pass: two more trunk tokens, then one token on each branch (they see the trunk)
    logits = run(model, [Append(g, PREFIX[4:] + [7, 21], [4, 5, 6, 6], [0, 0, a, b])])
    assert close(logits[2], fresh(model, PREFIX + [7])[-1])
    assert close(logits[3], fresh(model, PREFIX + [21])[-1])
    with pytest.raises(ValueError, match="already hold tokens"):
        g.append(torch.tensor([6]), torch.tensor([0]))
    h = pool.new_graph() if pool.live_slots < pool.max_slots else None
    assert h is None  # single-slot pool: the graph above holds it
    g.free()
    g = pool.new_graph()
    run(model, [Append(g, PREFIX[:2], range(2))])
    (c,) = g.fork(0, 1)
    with pytest.raises(ValueError, match="precede"):
        g.append(torch.tensor([2, 2]), torch.tensor([c, 0]))


def test_a_refused_join_leaves_the_graph_as_it_was(model):
    g = model.new_pool(1).new_graph()
    run(model, [Append(g, PREFIX[:3], range(3))])
    with pytest.raises(ValueError, match="segment 7 does not exist"):
        g.join([0, 7])
    assert g.num_segments == 1 and not g.sealed
    run(model, [Append(g, PREFIX[3:5], [3, 4])])  # the trunk still grows
    assert g.length == 5


def test_random_operations_free_every_slot_exactly_once(model):
    rng = random.Random(0)
    pool: KVPool = model.new_pool(4)
    live = []
    for _ in range(300):
        op = rng.random()
        if (op < 0.3 and len(live) < 4) or not live:
            g = pool.new_graph()
            n = rng.randint(1, 5)
            run(model, [Append(g, [rng.randrange(300) for _ in range(n)], range(n))])
            live.append((g, n))
        elif op < 0.5:
            g, toks = live.pop(rng.randrange(len(live)))
            g.free()
            with pytest.raises(RuntimeError):
                g.free()
        elif op < 0.7:
            g, toks = rng.choice(live)
            g.truncate(rng.randint(1, g.length))
        else:
            g, toks = rng.choice(live)
            leaf = g.num_segments - 1
            if leaf in g.sealed:
                continue
            run(model, [Append(g, [rng.randrange(300)], [g.length], leaf)])
        assert pool.live_slots == len(live)
        assert pool.used_tokens() == sum(g.length for g, _ in live)
        assert sorted(g.slot for g, _ in live) == list(range(len(live)))
    for g, _ in live:
        g.free()
    assert pool.live_slots == 0 and pool.used_tokens() == 0
    assert pool.allocations == pool.releases


def test_slot_compaction_keeps_the_moved_request_intact(model):
    pool = model.new_pool(3)
    graphs = [pool.new_graph() for _ in range(3)]
    seqs = [PREFIX, [9, 8, 7], [1, 2, 3, 4]]
    run(model, [Append(g, s, range(len(s))) for g, s in zip(graphs, seqs)])
    graphs[0].free()  # the last request moves into slot 0
    assert graphs[2].slot == 0
    logits = run(model, [Append(graphs[2], [77], [4]), Append(graphs[1], [66], [3])])
    assert close(logits[0], fresh(model, seqs[2] + [77])[-1])
    assert close(logits[1], fresh(model, seqs[1] + [66])[-1])


def test_a_copied_or_restarted_prompt_prefix_continues_like_a_fresh_run(model):
    """Samples of one prompt share its rows: by a copy into another slot, or by restarting a
    finished sample's graph at them; either then continues exactly as one plain run."""
    pool = model.new_pool(3)
    src = pool.new_graph()
    run(model, [Append(src, PREFIX + [7, 8], range(len(PREFIX) + 2))])
    copy = pool.new_graph()
    copy.copy_prefix(src, len(PREFIX))
    tail = [11, 12]
    got = run(model, [Append(copy, tail, range(len(PREFIX), len(PREFIX) + 2))])
    assert close(got, fresh(model, PREFIX + tail)[-2:])
    src.restart(len(PREFIX))
    again = run(model, [Append(src, tail, range(len(PREFIX), len(PREFIX) + 2))])
    assert close(again, fresh(model, PREFIX + tail)[-2:])
    with pytest.raises(ValueError, match="empty"):
        copy.copy_prefix(src, 2)  # copy already holds rows
    forked = pool.new_graph()
    run(model, [Append(forked, PREFIX, range(len(PREFIX)))])
    (branch,) = forked.fork(0, 1)
    run(model, [Append(forked, [5], [len(PREFIX)], branch)])
    with pytest.raises(ValueError, match="root-segment"):
        forked.restart(len(PREFIX) + 1)  # the branch's row is not part of a shared prompt
    assert forked.length == len(PREFIX) + 1
