"""MTAD's exact output distribution, two ways, on synthetic models over V = 3 tokens.

`ours` runs braid's own beam sampling (`BeamDraft`) and verdicts (`chain_verdict`,
`tree_verdict`) under every possible outcome of every random draw: the only randomness of beam
sampling is `draw(scores, n)` (n distinct indices, successively with probability ∝ score), so
replacing it with a scripted draw and weighting each script by its probability gives the exact
distribution of the emitted tokens. The next token is integrated exactly over its distribution.

`reference` is written separately from the issue's definition: beams are token tuples weighted by
their draft joint probability, W distinct beams drawn successively, the highest-weight final beam
verified with R_i = prod p/q (keep the largest i with R_i > tau), or for the tree every node
tested and the deepest passing one with the highest target joint kept. Both continue for N tokens
with the draft length the engine would use (min(gamma, tokens left - 1)).
"""

import itertools
import math

import pytest
import torch
from test_acceptance import V, random_model

from braid.methods.mtad import BeamDraft, chain_verdict, draw_distinct, tree_verdict


def sparse(model):
    """The model with its least likely token removed in every context (zeros in p or q)."""

    def dist(ctx):
        d = model(ctx).clone()
        d[d.argmin()] = 0.0
        return d / d.sum()

    return dist


# -- braid's code path under every draw outcome -------------------------------------------------
class NeedChoice(Exception):
    def __init__(self, scores, n):
        self.scores, self.n = scores, n


def ordered_draws(scores: torch.Tensor, n: int):
    """Every ordered selection of min(n, #positive) distinct indices, successive-draw odds."""
    positive = [i for i in range(scores.numel()) if scores[i] > 0]
    for seq in itertools.permutations(positive, min(n, len(positive))):
        prob, left = 1.0, float(scores.sum())
        for i in seq:
            prob *= float(scores[i]) / left
            left -= float(scores[i])
        yield torch.tensor(seq), prob


def tokens_to(nodes, i):
    out = []
    while i >= 0:
        out.append(nodes[i].token)
        i = nodes[i].parent
    return tuple(out[::-1])


def run_step(p, q, ctx, gamma, width, tau, tree, script):
    calls = iter(script)

    def draw(scores, n):
        pick = next(calls, None)
        if pick is None:
            raise NeedChoice(scores, n)
        return pick

    beam = BeamDraft(width)
    for _ in range(gamma):
        rows = [q(ctx + (tokens_to(beam.nodes, b) if b >= 0 else ())) for b in beam.frontier()]
        beam.extend(torch.stack(rows), draw)
    ns = beam.nodes
    if tree:
        p_rows = torch.stack([p(ctx)] + [p(ctx + tokens_to(ns, i)) for i in range(len(ns))])
        kept, nxt = tree_verdict(ns, p_rows, tau)
    else:
        chain = beam.best_chain()
        toks = tuple(ns[i].token for i in chain)
        p_rows = torch.stack([p(ctx + toks[:j]) for j in range(len(chain) + 1)])
        kept, nxt = chain_verdict(ns, chain, p_rows, tau)
    return tuple(ns[i].token for i in kept), nxt


def ours_step(p, q, ctx, gamma, width, tau, tree):
    out: dict[tuple, float] = {}

    def explore(script, prob):
        try:
            kept, nxt = run_step(p, q, ctx, gamma, width, tau, tree, script)
        except NeedChoice as need:
            for pick, pr in ordered_draws(need.scores, need.n):
                explore(script + [pick], prob * pr)
            return
        for x in range(V):
            if nxt[x] > 0:
                out[kept + (x,)] = out.get(kept + (x,), 0.0) + prob * float(nxt[x])

    explore([], 1.0)
    return out


# -- the reference, from the definition ---------------------------------------------------------
def successive_sets(weights: dict, n: int) -> dict:
    """{frozenset of keys: probability} for n distinct draws, each ∝ weight among those left."""
    result: dict = {}

    def rec(chosen, left, prob):
        live = {k: w for k, w in left.items() if w > 0}
        if len(chosen) == n or not live:
            key = frozenset(chosen)
            result[key] = result.get(key, 0.0) + prob
            return
        total = sum(live.values())
        for k, w in live.items():
            rest = dict(live)
            del rest[k]
            rec(chosen + [k], rest, prob * w / total)

    rec([], weights, 1.0)
    return result


def pv(model, ctx):
    return [float(x) for x in model(ctx)]


def beam_histories(q, ctx, gamma, width):
    """{(set at depth 1, ..., set at depth gamma): probability}; beams are token tuples."""
    out = {}

    def rec(history, prob):
        if len(history) == gamma:
            out[history] = out.get(history, 0.0) + prob
            return
        beams = history[-1] if history else [()]
        cands = {}
        for b in beams:
            joint = math.prod(pv(q, ctx + b[:j])[b[j]] for j in range(len(b)))
            for t, qt in enumerate(pv(q, ctx + b)):
                cands[b + (t,)] = joint * qt
        for chosen, pr in successive_sets(cands, width).items():
            rec(history + (tuple(sorted(chosen)),), prob * pr)

    rec((), 1.0)
    return out


def ratio_and_joint(p, q, ctx, path):
    ratio = joint = 1.0
    for j, t in enumerate(path):
        pt, qt = pv(p, ctx + path[:j])[t], pv(q, ctx + path[:j])[t]
        ratio, joint = ratio * pt / qt, joint * pt
    return ratio, joint


def reference_step(p, q, ctx, gamma, width, tau, tree, stop_at_first_failure=False):
    out: dict[tuple, float] = {}
    for history, prob in beam_histories(q, ctx, gamma, width).items():
        if tree:
            nodes = [b for level in history for b in level]
            passing = [b for b in nodes if ratio_and_joint(p, q, ctx, b)[0] > tau]
            deepest = [b for b in passing if len(b) == max(map(len, passing))]
            kept = max(deepest, key=lambda b: ratio_and_joint(p, q, ctx, b)[1], default=())
        else:
            final = history[-1] if history else [()]  # gamma 0: nothing drafted
            best = max(final, key=lambda b: ratio_and_joint(q, q, ctx, b)[1])  # draft joint
            length = 0
            for i in range(1, len(best) + 1):
                if ratio_and_joint(p, q, ctx, best[:i])[0] > tau:
                    length = i
                elif stop_at_first_failure:
                    break
            kept = best[:length]
        for x, px in enumerate(pv(p, ctx + kept)):
            if px > 0:
                out[kept + (x,)] = out.get(kept + (x,), 0.0) + prob * px
    return out


# -- N tokens from repeated steps, as the engine runs them -----------------------------------------
def sequence_probs(step, p, n, ctx=()):
    """Probability of each length-n output; the draft length is min(gamma, n - len(ctx) - 1)."""
    if len(ctx) >= n:
        return {ctx[:n]: 1.0}
    total: dict[tuple, float] = {}
    for emitted, pr in step(ctx, n - len(ctx) - 1).items():
        for seq, sub in sequence_probs(step, p, n, ctx + emitted).items():
            total[seq] = total.get(seq, 0.0) + pr * sub
    return total


def compare(a: dict, b: dict) -> float:
    return max(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


CASES = [  # (gamma, beams, tau, seed, sparse models)
    (1, 2, 0.5, 0, False),
    (2, 2, 0.5, 1, False),
    (3, 2, 0.5, 2, False),
    (2, 3, 0.3, 3, False),
    (3, 2, 0.8, 4, True),
]


@pytest.mark.parametrize("tree", [False, True], ids=["mtad", "mtad-tree"])
@pytest.mark.parametrize("gamma,beams,tau,seed,thin", CASES)
def test_mtad_output_distribution_equals_its_definition(gamma, beams, tau, seed, thin, tree):
    p, q = random_model(500 + seed), random_model(600 + seed)
    if thin:
        p, q = sparse(p), sparse(q)
    n = gamma + 1

    def ours(ctx, g):
        return ours_step(p, q, ctx, min(gamma, g), beams, tau, tree)

    def ref(ctx, g):
        return reference_step(p, q, ctx, min(gamma, g), beams, tau, tree)

    got, want = sequence_probs(ours, p, n), sequence_probs(ref, p, n)
    assert abs(sum(got.values()) - 1) < 1e-9
    assert compare(got, want) < 1e-9
    # MTAD is lossy: its distribution is not the target's (this is what the bench measures)
    target = {s: math.prod(pv(p, s[:t])[s[t]] for t in range(n)) for s in want}
    assert compare(want, target) > 1e-3


def test_the_comparison_catches_a_misread_joint_test():
    """Stopping at the first failing R_i (instead of keeping the largest passing i) differs."""
    p, q = random_model(502), random_model(602)
    ours = ours_step(p, q, (), 3, 2, 0.5, tree=False)
    wrong = reference_step(p, q, (), 3, 2, 0.5, tree=False, stop_at_first_failure=True)
    assert compare(ours, reference_step(p, q, (), 3, 2, 0.5, tree=False)) < 1e-9
    assert compare(ours, wrong) > 1e-4


@pytest.mark.parametrize(
    "weights, k",
    [([0.4, 0.1, 0.3, 0.2], 2), ([0.97, 0.01, 0.0, 0.015, 0.005], 3)],  # 2nd: repeats, redraws
)
def test_draw_distinct_samples_successively_in_proportion_to_the_weights(weights, k):
    """The enumeration above assumes this of the beam draws: ordered tuples over 20,000 draws
    within TV 0.03 of the successive-draw odds (noise about 0.01)."""
    weights = torch.tensor(weights, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    counts: dict[tuple, int] = {}
    for _ in range(n):
        key = tuple(draw_distinct(weights, k, gen).tolist())
        counts[key] = counts.get(key, 0) + 1
    exact = {tuple(s.tolist()): pr for s, pr in ordered_draws(weights, k)}
    tv = 0.5 * sum(abs(counts.get(k, 0) / n - exact.get(k, 0.0)) for k in set(counts) | set(exact))
    assert tv < 0.03, tv
