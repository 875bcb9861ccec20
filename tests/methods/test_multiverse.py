"""Multiverse decoding: forks, joins and fallbacks, checked against one training-style pass.

Random-weight models do not write structure, so a scripted logits processor forces it: the test
describes a document as a template of forced tokens and FREE slots (the model's own choice with
tags and eos banned). The processor finds where a branch is in the template from the tokens the
branch sees, which is exactly how the engine must present them.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import training_mask_logits

from braid import LLM, SamplingParams
from braid.errors import InvalidRequestError
from braid.multiverse import tags as T
from braid.multiverse.display import render, tree
from braid.multiverse.grammar import canonical, parse

FREE = -1


class Doc:
    """Builds a template: token ids and FREE slots in serialized order."""

    def __init__(self, mv_llm: LLM):
        self.tok = mv_llm.tokenizer
        self.id = {t: self.tok.token_id(t) for t in T.TAGS}
        self.eos = (mv_llm.model.config.eos_token_ids or mv_llm.tokenizer.eos_token_ids)[0]
        self.path_heads: list[list[int]] = []  # [<Path>, label tokens] of every path

    def enc(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def block(self, labels, contents, conclusion: int = 2, goal_text: str = " do it") -> list:
        t = [self.id[T.PARALLEL], self.id[T.GOAL]]
        for label in labels:
            t += [self.id[T.OUTLINE], *self.enc(f"{label}:{goal_text}"), self.id[T.OUTLINE_END]]
        t.append(self.id[T.GOAL_END])
        for label, content in zip(labels, contents, strict=True):
            head = [self.id[T.PATH], *self.enc(f"{label}:")]
            self.path_heads.append(head)
            t += head + content + [self.id[T.PATH_END]]
        t += [self.id[T.CONCLUSION], *[FREE] * conclusion, self.id[T.CONCLUSION_END]]
        return t + [self.id[T.PARALLEL_END]]

    def processor(self, template: list[int], record: dict):
        """Forces `template`; records the raw logits of every sampled row by visible context."""
        banned = torch.tensor([*self.id.values(), self.eos])

        def where(ctx: list[int]) -> int:
            t, m = 0, 0
            while m < len(ctx):
                if ctx[m] == self.id[T.PATH]:  # jump to the path whose forced head matches
                    for head in self.path_heads:
                        if ctx[m : m + len(head)] == head:
                            t = _find(template, head, t)
                m, t = m + 1, t + 1
            return t

        def proc(ctx: list[int], logits: torch.Tensor) -> torch.Tensor:
            record[tuple(ctx)] = logits.clone()
            t = where(ctx)
            out = logits.clone()
            if t >= len(template) or template[t] == FREE:
                out[banned] = float("-inf")
            else:
                out.fill_(float("-inf"))
                out[template[t]] = 0.0
            return out

        return proc


def _find(seq: list[int], sub: list[int], start: int) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    raise AssertionError("path head not in template")


def flat(doc: Doc) -> list:
    block = doc.block(["1", "2", "3"], [[FREE] * 4, [FREE], [FREE] * 6])
    return [FREE, FREE, doc.id[T.THINK], *block, doc.id[T.THINK_END], FREE, doc.eos]


def nested(doc: Doc) -> list:
    inner = doc.block(["2.1", "2.2"], [[FREE] * 3, [FREE] * 5], conclusion=1)
    outer = doc.block(["1", "2"], [[FREE] * 2, [FREE, *inner, FREE]], conclusion=3)
    again = doc.block(["1", "2"], [[FREE], [FREE] * 2], conclusion=1)
    return [doc.id[T.THINK], FREE, *outer, FREE, *again, doc.id[T.THINK_END], doc.eos]


def reference_logits(mv_dir, ids: list[int], tags: dict[str, int]):
    """One `transformers` pass with the Multiverse training mask and positions."""
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(mv_dir, dtype=torch.float32).eval()
    return training_mask_logits(model, ids, tags)


@pytest.mark.parametrize("shape", [flat, nested])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_logits_equal_one_pass_with_the_training_mask(mv_llm, mv_dir, shape, temperature):
    doc = Doc(mv_llm)
    template = shape(doc)
    record: dict = {}
    prompt = mv_llm.tokenizer.encode("The quick brown fox")
    params = SamplingParams(
        max_tokens=200,
        temperature=temperature,
        seed=1,
        logits_processors=[doc.processor(template, record)],
    )
    (out,) = mv_llm.generate([prompt], params, method="multiverse")
    assert out.finish_reason == "stop"
    assert not out.stats.warnings
    # the serialized output is the template with every FREE slot filled
    assert len(out.token_ids) == len(template)
    assert all(t == o for t, o in zip(template, out.token_ids) if t != FREE)
    ids = prompt + out.token_ids
    logits, visible = reference_logits(mv_dir, ids, doc.id)
    n = len(prompt)
    matched = 0
    for i in range(n - 1, len(ids) - 1):
        ctx = tuple(ids[j] for j in range(n, i + 1) if visible[i, j])
        if ctx in record:
            torch.testing.assert_close(record[ctx], logits[i], atol=1e-4, rtol=1e-4)
            matched += 1
    assert matched == len(record)
    paths = sum(1 for t in template if t == doc.id[T.PATH])
    assert out.stats.paths == paths and out.stats.fallbacks == 0
    assert out.stats.critical_path < len(out.token_ids)  # the paths really ran side by side


def test_stream_gives_sequential_parts_and_each_path_once(mv_llm):
    doc = Doc(mv_llm)
    template = flat(doc)
    params = SamplingParams(
        max_tokens=200, temperature=0, logits_processors=[doc.processor(template, {})]
    )
    prompt = mv_llm.tokenizer.encode("The quick brown fox")
    chunks = list(mv_llm.stream(prompt, params, method="multiverse"))
    final = mv_llm.last_stream_output.text
    assert final == canonical(final) and parse(final)
    # the same lines, with paths in the order they ended rather than outline order
    streamed = canonical("".join(chunks)).splitlines()
    assert sorted(streamed) == sorted(final.splitlines())
    assert sum(c.count(T.PATH_END) for c in chunks) == 3


def test_display_draws_each_path_under_its_block(mv_llm, capsys):
    doc = Doc(mv_llm)
    params = SamplingParams(
        max_tokens=200, temperature=0, logits_processors=[doc.processor(nested(doc), {})]
    )
    (out,) = mv_llm.generate([mv_llm.tokenizer.encode("x")], params, method="multiverse")
    shown = render(out.text).splitlines()
    labels = [line.replace("│", "").strip() for line in shown if "[" in line]
    assert labels == ["[1]", "[2]", "[2.1]", "[2.2]", "[1]", "[2]"]
    depth = {line.replace("│", "").strip(): line.count("│") for line in shown if "[" in line}
    assert depth["[2.1]"] == depth["[2]"] + 2
    assert tree(out.text)["items"][0]["type"] == "Think"


def test_cli_prints_the_structure_or_json(mv_dir, capsys):
    from braid.cli import main

    args = ["generate", "--model", str(mv_dir), "--method", "multiverse", "--prompt", "x"]
    args += ["--max-tokens", "6", "--temperature", "0", "--dtype", "fp32"]
    assert main(args + ["--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["stats"]["critical_path"] == 6 and record["finish_reason"] == "length"
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "critical path 6" in captured.err and "parallelism" in captured.err


def test_clear_errors_for_models_without_tags_and_stop_strings(mv_llm, llama_dir, capsys):
    from braid.cli import main

    with pytest.raises(InvalidRequestError, match="stop strings"):
        mv_llm.generate(["x"], SamplingParams(stop=["."]), method="multiverse")
    code = main(["generate", "--model", str(llama_dir), "--method", "multiverse", "--prompt", "x"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Multiverse tags" in err
