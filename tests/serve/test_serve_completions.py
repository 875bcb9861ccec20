"""Completions through the official openai client against a real `braid serve`, checked against
offline `LLM.generate` (a path without HTTP, loop or batching peers) and against definitions."""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from braid import SamplingParams
from braid.model.registry import bundled_model

PROMPTS = ["def add(a, b):\n", "import os\n", "class Stack:\n    def push(self, x):\n"]


def offline(llm, prompt: str, n: int, **kw) -> list:
    params = SamplingParams(max_tokens=n, temperature=0, **kw)
    return llm.generate([prompt], params)[0]


def stream_text(client, **kw) -> tuple[str, str | None]:
    text, reason = "", None
    for chunk in client.completions.create(stream=True, **kw):
        if chunk.choices:
            text += chunk.choices[0].text
            reason = chunk.choices[0].finish_reason or reason
    return text, reason


@pytest.mark.parametrize("server", ["code_server", "spec_server"])
def test_streamed_equals_full_equals_offline_at_t0(server, offline_code, request):
    srv = request.getfixturevalue(server)
    client = srv.client()
    for prompt in PROMPTS:
        ref = offline(offline_code, prompt, 24)
        kw = dict(model="code-23m", prompt=prompt, max_tokens=24, temperature=0)
        full = client.completions.create(**kw)
        streamed, reason = stream_text(client, **kw)
        assert full.choices[0].text == streamed == ref.text
        assert full.choices[0].finish_reason == reason == ref.finish_reason


def test_usage_counts_are_exact(code_server, offline_code):
    """prompt_tokens by the model's own tokenizer.json read with the `tokenizers` library."""
    tok = Tokenizer.from_file(str(Path(bundled_model("code-23m")) / "tokenizer.json"))
    client = code_server.client()
    for prompt in PROMPTS:
        out = client.completions.create(
            model="code-23m", prompt=prompt, max_tokens=9, temperature=0, n=2
        )
        ref = offline(offline_code, prompt, 9)
        assert out.usage.prompt_tokens == len(tok.encode(prompt).ids)
        assert out.usage.completion_tokens == 2 * len(ref.token_ids)
        assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    # a list of prompts: one choice per prompt, prompts counted once each
    out = client.completions.create(model="code-23m", prompt=PROMPTS, max_tokens=5, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert out.usage.prompt_tokens == sum(len(tok.encode(p).ids) for p in PROMPTS)
    assert [c.text for c in out.choices] == [offline(offline_code, p, 5).text for p in PROMPTS]
    # streamed usage: the final chunk, when asked
    chunks = list(
        client.completions.create(
            model="code-23m",
            prompt=PROMPTS[0],
            max_tokens=7,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.completion_tokens == len(offline(offline_code, PROMPTS[0], 7).token_ids)
    assert all(c.usage is None for c in chunks[:-1])


def test_n3_with_a_seed_gives_three_indexed_seeded_choices(code_server, offline_code):
    client = code_server.client()
    kw = dict(max_tokens=12, temperature=1.0, top_p=1.0, seed=11)
    out = client.completions.create(model="code-23m", prompt=PROMPTS[0], n=3, **kw)
    assert sorted(c.index for c in out.choices) == [0, 1, 2]
    ref = offline_code.generate([PROMPTS[0]], SamplingParams(n=3, **kw))[0]
    assert [c.text for c in sorted(out.choices, key=lambda c: c.index)] == [
        o.text for o in ref.outputs
    ]
    assert len({c.text for c in out.choices}) > 1  # the seeds differ per sample


def test_token_id_prompts_and_echo(code_server, offline_code):
    client = code_server.client()
    ids = offline_code.tokenizer.encode(PROMPTS[1])
    out = client.completions.create(model="code-23m", prompt=ids, max_tokens=6, temperature=0)
    ref = offline(offline_code, PROMPTS[1], 6)
    assert out.choices[0].text == ref.text
    echoed = client.completions.create(
        model="code-23m", prompt=PROMPTS[1], max_tokens=6, temperature=0, echo=True
    )
    assert echoed.choices[0].text == PROMPTS[1] + ref.text


def test_stop_strings_that_straddle_accepted_drafts_are_cut_exactly(spec_server, offline_code):
    """Cut at the first occurrence, by definition; the speculative server accepts several
    tokens per pass, so most stops fall inside an accepted draft."""
    client = spec_server.client()
    checked = 0
    for prompt in PROMPTS:
        ref = offline(offline_code, prompt, 40, ignore_eos=True)
        toks = [offline_code.tokenizer.decode(ref.token_ids[: i + 1]) for i in range(40)]
        for i in (6, 13, 21):  # a stop spanning the end of token i and the start of token i+1
            start = max(len(toks[i - 1]), len(toks[i]) - 2)
            stop = ref.text[start : len(toks[i]) + 2]
            if len(stop) < 2:
                continue
            expected = ref.text[: ref.text.find(stop)]
            kw = dict(model="code-23m", prompt=prompt, max_tokens=40, temperature=0)
            out = client.completions.create(stop=[stop], extra_body={"ignore_eos": True}, **kw)
            assert out.choices[0].text == expected, stop
            assert out.choices[0].finish_reason == "stop"
            streamed, reason = stream_text(
                client, stop=[stop], extra_body={"ignore_eos": True}, **kw
            )
            assert streamed == expected and reason == "stop"
            checked += 1
    assert checked >= 6


def test_max_tokens_is_exact_under_speculation(spec_server, offline_code):
    client = spec_server.client()
    for n in (1, 2, 3, 5, 8, 13):
        out = client.completions.create(
            model="code-23m",
            prompt=PROMPTS[0],
            max_tokens=n,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        assert out.usage.completion_tokens == n
        assert out.choices[0].finish_reason == "length"
        assert out.choices[0].text == offline(offline_code, PROMPTS[0], n, ignore_eos=True).text
        assert out.model_extra["braid"]["method"] == "spec"


def test_models_tokenize_detokenize_version(code_server, offline_code):
    models = code_server.client().models.list()
    assert [m.id for m in models.data] == ["code-23m"]
    r = code_server.post("/tokenize", json={"prompt": PROMPTS[0]}).json()
    assert r["tokens"] == offline_code.tokenizer.encode(PROMPTS[0])
    d = code_server.post("/detokenize", json={"tokens": r["tokens"]}).json()
    assert d["prompt"] == PROMPTS[0]
    assert "version" in code_server.get("/version").json()
    body = json.loads(code_server.get("/health").text)
    assert body["status"] == "ok"


def test_multiverse_over_http_matches_offline_and_reports_its_tree(tmp_path):
    from servers import start_server, stop_server

    from braid import LLM
    from braid.multiverse.tasks import make_task

    prompt = make_task(1).prompt
    server = start_server(
        ["--model", "multiverse-arith", "--method", "multiverse", "--dtype", "fp32"],
        tmp_path / "mv.log",
    )
    kw = dict(model="multiverse-arith", prompt=prompt, max_tokens=200, temperature=0)
    try:
        out = server.client().completions.create(**kw)
        chunks = list(server.client().completions.create(stream=True, **kw))
    finally:
        stop_server(server)
    llm = LLM(bundled_model("multiverse-arith"), dtype="fp32")
    params = SamplingParams(max_tokens=200, temperature=0)
    ref = llm.generate([prompt], params, method="multiverse")[0]
    assert out.choices[0].text == ref.text and "<Parallel>" in ref.text
    braid = out.model_extra["braid"]
    assert braid["critical_path"] == ref.stats.critical_path
    assert braid["paths"] == ref.stats.paths >= 1
    (tree,) = braid["trees"]  # a block of three paths, the third holding one of two
    assert [b["paths"] for b in tree["blocks"]] == [["1", "2", "3"], ["3.1", "3.2"]]
    # the stream tags each top-level path as it ends
    ended = [p for c in chunks for p in (c.model_extra.get("braid") or {}).get("ended_paths", [])]
    assert sorted(p["label"] for p in ended) == ["1", "2", "3"]
    assert {p["block"] for p in ended} == {0}
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed.split() == ref.text.split()
    for p in ended:
        assert p["text"].startswith("<Path>") and p["text"] in streamed
