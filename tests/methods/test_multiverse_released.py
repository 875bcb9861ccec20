"""The released checkpoint's layout (Multiverse-32B), run as that model was trained.

A random-weight Qwen2 model gets a tokenizer of the released layout: the twelve tags as plain
special tokens appended after the base vocabulary (no whitespace absorbed), newline tokens
between tags. The reference is a reimplementation of the official training code's position ids
and attention mask, written from its definition (Multiverse4FM/Multiverse, train/utils.py):

- positions count on by one, except that each `<Path>` restarts at position(`</Goal>`) + 1 of its
  block and each `<Conclusion>` at the block's max position(`</Path>`) + 1;
- the mask is causal, except that the spans `<Path>` ... `</Path>` of sibling paths (nested
  blocks included) do not see each other; tokens between spans belong to no span. (For an
  output that stops inside a block: the rows the complete example would give that prefix.)

The forced text is the official engine's: "\\n<Path>\\n{label}:" for each path and
"<Conclusion>\\n" after the join.
"""

from __future__ import annotations

import pytest
import torch
from test_multiverse import FREE
from test_multiverse_structure import Script
from tokenizers import AddedToken, Tokenizer

from braid import LLM, SamplingParams
from braid.multiverse import tags as T

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory):
    from helpers import make_hf_model

    path = make_hf_model("qwen2", tmp_path_factory.mktemp("released") / "m", seed=5)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    base = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in T.TAGS])
    assert [tok.token_to_id(t) for t in T.TAGS] == list(range(base, base + 12))
    tok.save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def released_llm(released_dir):
    return LLM(released_dir, dtype="fp32", max_batch=4)


# -- the official layout, reimplemented from its definition -------------------------------------
def official_positions(ids: list[int], tags: dict[str, int]) -> list[int]:
    name = {tags[t]: t for t in T.TAGS}
    blocks: list[dict] = []  # open <Parallel>s: position of </Goal>, max position of </Path>
    out, pos = [], -1
    for token in ids:
        tag = name.get(token)
        pos += 1
        if tag == T.PARALLEL:
            blocks.append({"goal_end": None, "max_end": -1})
        elif tag == T.GOAL_END and blocks:
            blocks[-1]["goal_end"] = pos
        elif tag == T.PATH and blocks and blocks[-1]["goal_end"] is not None:
            pos = blocks[-1]["goal_end"] + 1
        elif tag == T.PATH_END and blocks:
            blocks[-1]["max_end"] = max(pos, blocks[-1]["max_end"])
        elif tag == T.CONCLUSION and blocks and blocks[-1]["goal_end"] is not None:
            pos = max(blocks[-1]["max_end"], blocks[-1]["goal_end"]) + 1
        elif tag == T.PARALLEL_END and blocks:
            blocks.pop()
        out.append(pos)
    return out


def official_visible(ids: list[int], tags: dict[str, int]) -> torch.Tensor:
    """The official mask; for a prefix of an example (blocks still open at the end), the rows
    the whole example would give it: open paths reach the end, open blocks mask their spans."""
    n = len(ids)
    visible = torch.ones(n, n, dtype=torch.bool).tril()

    def separate(spans: list[tuple[int, int]]) -> None:
        for a, (sa, ea) in enumerate(spans):
            for sb, eb in spans[a + 1 :]:
                visible[sa : ea + 1, sb : eb + 1] = False
                visible[sb : eb + 1, sa : ea + 1] = False

    stack: list[tuple[str, int, list]] = []  # ("block", start, spans) or ("path", start, [])
    for i, token in enumerate(ids):
        if token == tags[T.PARALLEL]:
            stack.append(("block", i, []))
        elif token == tags[T.PATH]:
            stack.append(("path", i, []))
        elif token == tags[T.PATH_END]:
            assert stack and stack[-1][0] == "path", "an official example closes its paths"
            start = stack.pop()[1]
            block = next(s for s in reversed(stack) if s[0] == "block")
            block[2].append((start, i))
        elif token == tags[T.PARALLEL_END]:
            separate(stack.pop()[2])
    for k, (kind, start, _) in enumerate(stack):
        if kind == "path":
            block = next(s for s in reversed(stack[:k]) if s[0] == "block")
            block[2].append((start, n - 1))
    for kind, _, spans in stack:
        if kind == "block":
            separate(spans)
    return visible


# -- templates in the released layout -----------------------------------------------------------
class ReleasedDoc:
    """Templates as the released data writes them: a newline token between tags."""

    def __init__(self, llm: LLM):
        self.tok = llm.tokenizer
        self.id = {t: self.tok.token_id(t) for t in T.TAGS}
        self.eos = (llm.model.config.eos_token_ids or llm.tokenizer.eos_token_ids)[0]
        self.path_heads: list[list[int]] = []
        self.nl = self.enc("\n")

    def enc(self, text: str) -> list[int]:
        return self.tok.encode(text, special=False)

    def block(self, labels, contents, conclusion: int = 2) -> list:
        i, nl = self.id, self.nl
        t = [i[T.PARALLEL], *nl, i[T.GOAL], *nl]
        for label in labels:
            t += [i[T.OUTLINE], *self.enc(f"\n{label}: go\n"), i[T.OUTLINE_END], *nl]
        t.append(i[T.GOAL_END])
        for k, (label, content) in enumerate(zip(labels, contents, strict=True)):
            forced = self.enc(f"\n{T.PATH}\n{label}:")  # the official engine's text
            if k:  # the newline before <Path> is written once, after </Goal>
                forced = forced[forced.index(i[T.PATH]) :]
            self.path_heads.append(forced[forced.index(i[T.PATH]) :])
            t += forced + content + [i[T.PATH_END]]
        t += nl + self.enc(f"{T.CONCLUSION}\n") + [FREE] * conclusion + nl
        return t + [i[T.CONCLUSION_END], *nl, i[T.PARALLEL_END], *nl]


def flat(doc: ReleasedDoc) -> list:
    i = doc.id
    # the last path is not the longest: the newline after it and <Conclusion> part ways
    body = doc.block(["1", "2", "3"], [[FREE] * 3, [FREE] * 5, [FREE]])
    return [FREE, i[T.THINK], *doc.nl, *body, i[T.THINK_END], FREE, doc.eos]


def nested(doc: ReleasedDoc) -> list:
    i = doc.id
    inner = doc.block(["2.1", "2.2"], [[FREE] * 2, [FREE] * 4], conclusion=1)
    outer = doc.block(["1", "2"], [[FREE] * 3, [FREE, *doc.nl, *inner, FREE]], conclusion=2)
    again = doc.block(["1", "2"], [[FREE] * 3, [FREE]], conclusion=1)
    return [i[T.THINK], *doc.nl, *outer, FREE, *doc.nl, *again, i[T.THINK_END], doc.eos]


def eos_in_nested_conclusion(doc: ReleasedDoc) -> list:
    """Path 2 ends (end of sequence) inside its nested block's Conclusion: the engine closes
    the Conclusion, the block and the path, and the trunk (off the template) stops there."""
    i = doc.id
    inner = doc.block(["2.1", "2.2"], [[FREE] * 2, [FREE]], conclusion=2)[:-4]
    assert inner[-1] == doc.nl[-1] and len(doc.nl) == 1  # cut after the Conclusion's text
    outer = doc.block(["1", "2"], [[FREE] * 3, [FREE, *doc.nl, *inner, FREE, doc.eos]])
    return [i[T.THINK], *doc.nl, *outer, doc.eos]


@pytest.mark.parametrize("shape", [flat, nested, eos_in_nested_conclusion])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_equals_the_official_training_layout(released_llm, released_dir, shape, temperature):
    from helpers import hf_masked_logits, hf_model

    doc = ReleasedDoc(released_llm)
    template = shape(doc)
    script = Script(doc, template)
    params = SamplingParams(
        max_tokens=200, temperature=temperature, seed=3, logits_processors=[script]
    )
    prompt = released_llm.tokenizer.encode(PROMPT)
    (out,) = released_llm.generate([prompt], params, method="multiverse")
    assert out.finish_reason == "stop" and out.stats.fallbacks == 0
    assert out.stats.paths == template.count(doc.id[T.PATH])
    if shape is eos_in_nested_conclusion:
        closed = doc.enc("</Conclusion>\n</Parallel>\n</Path>")
        k = template.index(doc.eos)  # the path's end of sequence: serialized order up to it
        assert all(t in (FREE, o) for t, o in zip(template[:k], out.token_ids, strict=False))
        assert out.token_ids[k : k + len(closed)] == closed
        assert out.stats.warnings == [
            "end of sequence inside path 2: closed with "
            + "".join([T.CONCLUSION_END, T.PARALLEL_END, T.PATH_END])
        ]
    else:  # the output is the template: the forced text is the official engine's
        assert not out.stats.warnings, out.stats.warnings
        assert len(out.token_ids) == len(template)
        assert all(t in (FREE, o) for t, o in zip(template, out.token_ids, strict=True))
    ids = prompt + out.token_ids
    positions = official_positions(ids, doc.id)
    visible = official_visible(ids, doc.id)
    logits = hf_masked_logits(hf_model(released_dir), ids, positions, visible)
    n, matched = len(prompt), set()
    for i in range(n - 1, len(ids)):
        ctx = tuple(ids[j] for j in range(n, i + 1) if visible[i, j])
        if ctx in script.record:
            torch.testing.assert_close(script.record[ctx], logits[i], atol=1e-4, rtol=1e-4)
            matched.add(ctx)
    assert matched == set(script.record)
    assert out.stats.critical_path < len(out.token_ids)  # the paths ran side by side


def test_released_text_keeps_its_newlines(released_llm):
    doc = ReleasedDoc(released_llm)
    script = Script(doc, flat(doc))
    params = SamplingParams(max_tokens=200, temperature=0, logits_processors=[script])
    (out,) = released_llm.generate(
        [released_llm.tokenizer.encode(PROMPT)], params, method="multiverse"
    )
    assert "</Goal>\n<Path>\n1:" in out.text and "\n<Conclusion>\n" in out.text
