"""Multiverse training mask and positions: hand-worked examples, a second implementation written
from the rules (recursive, per-token path ancestry), and transformers' logits end to end."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from helpers import hf_config

from braid.errors import InvalidRequestError
from braid.multiverse.attention import LayoutError, multiverse_attention_inputs, multiverse_layout
from braid.multiverse.tags import TAGS

TAG_IDS = {tag: 300 + k for k, tag in enumerate(TAGS)}  # inside the tiny model's 320-token vocab
SHORT = {
    "T": "<Think>", "/T": "</Think>", "P": "<Parallel>", "/P": "</Parallel>",
    "G": "<Goal>", "/G": "</Goal>", "O": "<Outline>", "/O": "</Outline>",
    "A": "<Path>", "/A": "</Path>", "C": "<Conclusion>", "/C": "</Conclusion>",
}  # fmt: skip


def seq(spec: str) -> list[int]:
    """Token ids from a compact spec: tag codes as above, anything else is a text token."""
    return [TAG_IDS[SHORT[w]] if w in SHORT else 7 for w in spec.split()]


def causal_except(T: int, blocked: list[tuple[range, range]]) -> torch.Tensor:
    vis = torch.ones(T, T, dtype=torch.bool).tril()
    for rows, cols in blocked:
        for q, k in itertools.product(rows, cols):
            vis[q, k] = False
    return vis


# ---- hand-worked examples ------------------------------------------------------------------

FLAT = "x P G O x /O O x /O /G A x x /A A x /A C x /C /P x"
#       0 1 2 3 4 5  6 7 8  9  10 . . 13 14 . 16 17 . 19 20 21


def test_flat_two_paths_literal():
    pos, vis = multiverse_layout(seq(FLAT), TAG_IDS)
    # path 2 restarts at pos(</Goal>) + 1 = 10; Conclusion at max(13, 12) + 1 = 14
    assert pos.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 10, 11, 12, 14, 15, 16,
                            17, 18]  # fmt: skip
    rows = [
        "1000000000000000000000",
        "1100000000000000000000",
        "1110000000000000000000",
        "1111000000000000000000",
        "1111100000000000000000",
        "1111110000000000000000",
        "1111111000000000000000",
        "1111111100000000000000",
        "1111111110000000000000",
        "1111111111000000000000",
        "1111111111100000000000",
        "1111111111110000000000",
        "1111111111111000000000",
        "1111111111111100000000",
        "1111111111000010000000",  # <Path> 2 sees the prefix, not path 1
        "1111111111000011000000",
        "1111111111000011100000",
        "1111111111111111110000",  # <Conclusion> sees both paths
        "1111111111111111111000",
        "1111111111111111111100",
        "1111111111111111111110",
        "1111111111111111111111",
    ]
    assert vis.int().tolist() == [[int(c) for c in r] for r in rows]


NESTED = (
    "P G O x /O O x /O /G "  # 0-8
    "A x /A "  # 9-11: path 1
    "A x P G O x /O O x /O /G "  # 12-22: path 2 opens a nested block
    "A x x /A A x /A C x /C /P "  # 23-33: nested paths 2.1, 2.2 and conclusion
    "x /A "  # 34-35
    "C x /C /P"  # 36-39
)


def test_nested_literal():
    pos, vis = multiverse_layout(seq(NESTED), TAG_IDS)
    assert pos.tolist() == [
        0, 1, 2, 3, 4, 5, 6, 7, 8,
        9, 10, 11,
        9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
        20, 21, 22, 23, 20, 21, 22, 24, 25, 26, 27,  # inner conclusion: max(23, 22) + 1
        28, 29,
        30, 31, 32, 33,  # outer conclusion: max(11, 29) + 1
    ]  # fmt: skip
    expected = causal_except(40, [(range(12, 36), range(9, 12)), (range(27, 30), range(23, 27))])
    assert torch.equal(vis, expected)


def test_two_blocks_in_a_row_literal():
    spec = (
        "T x P G O /O O /O /G A x /A A x x /A C /C /P "  # 0-18
        "x P G O /O O /O O /O /G A /A A x /A A x x x /A C x /C /P /T x"  # 19-44
    )
    pos, vis = multiverse_layout(seq(spec), TAG_IDS)
    assert pos.tolist() == [
        0, 1, 2, 3, 4, 5, 6, 7, 8,
        9, 10, 11, 9, 10, 11, 12,
        13, 14, 15,  # conclusion at max(11, 12) + 1
        16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
        26, 27, 26, 27, 28, 26, 27, 28, 29, 30,
        31, 32, 33, 34, 35, 36,  # conclusion at max(27, 28, 30) + 1
    ]  # fmt: skip
    expected = causal_except(
        45,
        [
            (range(12, 16), range(9, 12)),
            (range(31, 34), range(29, 31)),
            (range(34, 39), range(29, 34)),
        ],
    )
    assert torch.equal(vis, expected)


def test_truncated_open_block_literal():
    spec = "P G O x /O O x /O /G A x x /A A x x"  # ends inside path 2, no conclusion
    pos, vis = multiverse_layout(seq(spec), TAG_IDS)
    assert pos.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 9, 10, 11]
    assert torch.equal(vis, causal_except(16, [(range(13, 16), range(9, 13))]))
    # ending right after </Goal>, or inside the goal, is plain causal
    pos, vis = multiverse_layout(seq("x P G O x /O /G"), TAG_IDS)
    assert pos.tolist() == list(range(7))
    assert torch.equal(vis, causal_except(7, []))


def test_padding_left_and_right_literal():
    flat = seq("P G O /O O /O /G A x /A A /A C /C /P")  # 15 tokens
    assert len(flat) == 15
    ids = torch.tensor([[0, 0] + flat, flat + [0, 0]])
    am = torch.tensor([[0, 0] + [1] * 15, [1] * 15 + [0, 0]])
    pos, mask = multiverse_attention_inputs(ids, TAG_IDS, am)
    real_pos = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 7, 8, 10, 11, 12]
    assert pos.tolist() == [[0, 0] + real_pos, real_pos + [0, 0]]
    assert mask.shape == (2, 1, 17, 17) and mask.dtype == torch.float32
    lo = torch.finfo(torch.float32).min
    real_vis = causal_except(15, [(range(10, 12), range(7, 10))])
    for b, offset in ((0, 2), (1, 0)):
        m = mask[b, 0]
        assert set(m.unique().tolist()) == {0.0, lo}
        vis = m == 0
        assert torch.equal(vis[offset : offset + 15, offset : offset + 15], real_vis)
        pads = [i for i in range(17) if am[b, i] == 0]
        for p in pads:
            assert vis[:, p].tolist() == [q == p for q in range(17)]  # only the pad itself
            assert vis[p].tolist() == [k == p for k in range(17)]


def test_bf16_mask_uses_bf16_min():
    _, mask = multiverse_attention_inputs([seq(FLAT)], TAG_IDS, dtype=torch.bfloat16)
    assert mask.dtype == torch.bfloat16
    assert mask.min().item() == torch.finfo(torch.bfloat16).min


@pytest.mark.parametrize(
    "spec, index, words",
    [
        ("x A x /A", 1, "<Path> at top level"),
        ("P O", 1, "<Outline> at <Parallel>"),
        ("P G /G", 2, "no <Outline>"),
        ("P G O /O /G x A /A", 5, "token(s) between"),
        ("P G O /O O /O /G A /A x A /A", 9, "token(s) between"),
        ("P G O /O /G A /A x C", 7, "token(s) between"),
        ("P G O /O /G A /A x", 7, "in no path"),
        ("P G O /O /G A /A A /A", 7, "number 2, but the <Goal> has 1"),
        ("P G O /O O /O /G A /A C", 9, "after 1 path(s), but the <Goal> has 2"),
        ("P G O /O /G A /A /P", 7, "before the block's <Conclusion>"),
        ("P G O /O /G A /P", 6, "while <Path> (token 5) is still open"),
        ("x /P", 1, "closes nothing"),
        ("P G O /O /G A /O", 6, "open: <Path>"),
        ("x /A", 1, "closes nothing"),
        ("P G O P", 3, "inside <Outline>"),
        ("P G O /O /G A /A C P", 8, "inside <Conclusion>"),
        ("P G O /O /G C", 5, "follows the paths"),
    ],
)
def test_malformed_structure_names_the_token(spec, index, words):
    with pytest.raises(LayoutError) as e:
        multiverse_layout(seq(spec), TAG_IDS)
    assert e.value.index == index
    assert words in str(e.value)
    assert str(e.value).startswith(f"token {index}: ")


def test_batch_error_names_row_and_padded_index():
    ids = [seq("x x x x"), [0] + seq("x A /A")]
    with pytest.raises(LayoutError, match=r"row 1, token 2: <Path> at top level"):
        multiverse_attention_inputs(ids, TAG_IDS, [[1, 1, 1, 1], [0, 1, 1, 1]])


def test_bad_arguments():
    with pytest.raises(InvalidRequestError, match="lacks <Parallel>"):
        multiverse_layout([1, 2], {t: i for t, i in TAG_IDS.items() if t != "<Parallel>"})
    with pytest.raises(InvalidRequestError, match="1-D"):
        multiverse_layout([[1, 2]], TAG_IDS)
    with pytest.raises(InvalidRequestError, match="must match"):
        multiverse_attention_inputs([[1, 2]], TAG_IDS, [[1, 1, 1]])
    with pytest.raises(InvalidRequestError, match=r"\[batch, tokens\]"):
        multiverse_attention_inputs([1, 2], TAG_IDS)


# ---- a second implementation, written from the rules in another style ------------------------


def reference_layout(tokens: list[str]) -> tuple[list[int], list[list[bool]]]:
    """Recursive descent; each token gets its position and its path ancestry [(block, path)].

    Two tokens are mutually invisible iff their ancestries share a block with different paths.
    """
    T = len(tokens)
    pos: list[int] = [0] * T
    anc: list[tuple] = [()] * T
    blocks = itertools.count()

    def emit(i: int, p: int, a: tuple) -> None:
        pos[i], anc[i] = p, a

    def region(i: int, p: int, a: tuple, stop: str) -> tuple[int, int]:
        """Tokens up to (not including) `stop` or the end; blocks recurse."""
        while i < T and tokens[i] != stop:
            if tokens[i] == "<Parallel>":
                i, p = block(i, p, a)
            else:
                emit(i, p, a)
                i, p = i + 1, p + 1
        return i, p

    def block(i: int, p: int, a: tuple) -> tuple[int, int]:
        b = next(blocks)
        emit(i, p, a)  # <Parallel>
        i, p = region(i + 1, p + 1, a, "</Goal>")
        if i == T:
            return i, p
        emit(i, p, a)  # </Goal>
        goal_end, i = p, i + 1
        ends = []
        k = 0
        while i < T and tokens[i] == "<Path>":
            inner = a + ((b, k),)
            emit(i, goal_end + 1, inner)
            i, q = region(i + 1, goal_end + 2, inner, "</Path>")
            if i == T:
                return i, q
            emit(i, q, inner)  # </Path>
            ends.append(q)
            i, k = i + 1, k + 1
        if i == T:
            return i, p
        i, p = region(i, max(ends) + 1, a, "</Parallel>")  # the conclusion
        if i < T:
            emit(i, p, a)
            i, p = i + 1, p + 1
        return i, p

    region(0, 0, (), "<never>")
    vis = [
        [
            k <= q and not any(x[0] == y[0] and x[1] != y[1] for x in anc[q] for y in anc[k])
            for k in range(T)
        ]
        for q in range(T)
    ]
    return pos, vis


def random_structure(rng: random.Random, depth: int = 0) -> list[str]:
    out: list[str] = []
    for _ in range(rng.randint(0, 2)):
        out += ["x"] * rng.randint(0, 3)
        if depth < 3 and rng.random() < 0.5:
            out += random_block(rng, depth)
    return out


def random_block(rng: random.Random, depth: int) -> list[str]:
    n = rng.randint(1, 3)
    out = ["<Parallel>"] + ["x"] * rng.randint(0, 1) + ["<Goal>"]
    for _ in range(n):
        out += ["<Outline>"] + ["x"] * rng.randint(0, 2) + ["</Outline>"]
    out += ["</Goal>"]
    for _ in range(n):
        out += ["<Path>"] + random_structure(rng, depth + 1) + ["x"] * rng.randint(0, 5)
        out += ["</Path>"]
    return out + ["<Conclusion>"] + ["x"] * rng.randint(0, 3) + ["</Conclusion>", "</Parallel>"]


def test_matches_reference_on_random_structures():
    rng = random.Random(0)
    checked = 0
    for trial in range(200):
        body = random_block(rng, 0) + random_structure(rng)
        if len(body) > 250:  # keep the quadratic reference quick
            continue
        tokens = ["<Think>", "x"] + body + ["</Think>", "x"]
        if trial % 2:
            tokens = tokens[: rng.randint(1, len(tokens))]  # a truncated example
        ids = [TAG_IDS[t] if t in TAG_IDS else 5 for t in tokens]
        pos, vis = multiverse_layout(ids, TAG_IDS)
        ref_pos, ref_vis = reference_layout(tokens)
        assert pos.tolist() == ref_pos, tokens
        assert vis.tolist() == ref_vis, tokens
        checked += tokens.count("<Path>") > 1
    assert checked > 120  # most trials really had sibling paths


# ---- end to end with transformers -----------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    import transformers as tf

    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(hf_config("llama")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08)
    return model


def random_ids(spec: str, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    ids = seq(spec)
    text = torch.randint(1, 300, (len(ids),), generator=gen).tolist()
    return [i if i >= 300 else t for i, t in zip(ids, text)]


def logits(model, ids, positions=None, mask=None, impl="eager"):
    model.config._attn_implementation = impl
    with torch.no_grad():
        return model(
            torch.tensor([ids]),
            position_ids=None if positions is None else positions[None],
            attention_mask=mask,
        ).logits[0]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "spec, drop, check",
    [
        # flat: drop path 1 (tokens 11-16), compare path 2 (17-22)
        ("x x P G O x /O O x /O /G A x x x x /A A x x x x /A C x /C /P", range(11, 17),
         range(17, 23)),
        # nested: drop outer path 1 and inner path 2.1, compare inner path 2.2
        (NESTED, [*range(9, 12), *range(23, 27)], range(27, 30)),
    ],
)  # fmt: skip
def test_sibling_paths_invisible_and_positions_restart(llama, impl, spec, drop, check):
    ids = random_ids(spec, seed=1)
    pos, mask = multiverse_attention_inputs([ids], TAG_IDS)
    full = logits(llama, ids, pos[0], mask, impl)
    keep = [i for i in range(len(ids)) if i not in drop]
    # the kept tokens form an ordinary sequence: positions 0, 1, 2, ... under a causal mask
    upto = keep[: keep.index(check[-1]) + 1]
    assert pos[0, upto].tolist() == list(range(len(upto)))
    short = logits(llama, [ids[i] for i in keep], impl=impl)
    for c in check:
        torch.testing.assert_close(full[c], short[keep.index(c)], atol=1e-5, rtol=0)
    # and path 1 really changes things when it is visible (the test can fail)
    causal = logits(llama, ids, impl=impl)
    assert (causal[check[0]] - full[check[0]]).abs().max() > 1e-3


def test_padded_batch_matches_unpadded(llama):
    a = random_ids(FLAT, seed=2)
    b = random_ids("x P G O x /O O x /O O /O /G A x /A A /A A x x /A C x /C /P", seed=3)
    T = max(len(a), len(b))
    ids = torch.tensor([[0] * (T - len(a)) + a, b + [0] * (T - len(b))])
    am = torch.tensor([[0] * (T - len(a)) + [1] * len(a), [1] * len(b) + [0] * (T - len(b))])
    pos, mask = multiverse_attention_inputs(ids, TAG_IDS, am)
    llama.config._attn_implementation = "eager"
    with torch.no_grad():
        out = llama(ids, position_ids=pos, attention_mask=mask).logits
    assert not out.isnan().any()
    for row, one, start in ((0, a, T - len(a)), (1, b, 0)):
        p1, m1 = multiverse_attention_inputs([one], TAG_IDS)
        ref = logits(llama, one, p1[0], m1)
        torch.testing.assert_close(out[row, start : start + len(one)], ref, atol=1e-5, rtol=0)
