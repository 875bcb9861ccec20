"""Chat completions on the default model (SmolLM2-135M-Instruct and its chat template), and
`braid curate` run end to end against `braid serve`."""

import json
import subprocess
import sys

import pytest
from servers import scrape, start_server, stop_server, value

from braid import SamplingParams

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ],
]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def smol_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "smol.log"
    server = start_server(["--max-batch", "4", "--max-tokens", str(MAX_TOKENS)], log)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def smol():
    from braid import LLM

    return LLM(max_batch=1)


def test_chat_streamed_equals_full_equals_offline_chat(smol_server, smol):
    client = smol_server.client()
    model = client.models.list().data[0].id
    for messages in CONVERSATIONS:
        ref = smol.chat(messages, SamplingParams(max_tokens=MAX_TOKENS, temperature=0))[0]
        kw = dict(model=model, messages=messages, temperature=0)
        full = client.chat.completions.create(max_tokens=MAX_TOKENS, **kw)
        assert full.choices[0].message.role == "assistant"
        assert full.choices[0].message.content == ref.text
        assert full.choices[0].finish_reason == ref.finish_reason
        assert full.usage.prompt_tokens == len(ref.prompt_token_ids)
        assert full.usage.completion_tokens == len(ref.token_ids)
        text, reason, usage = "", None, None
        stream = client.chat.completions.create(
            max_completion_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
            **kw,
        )
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                reason = chunk.choices[0].finish_reason or reason
            usage = chunk.usage or usage
        assert text == ref.text and reason == ref.finish_reason
        assert usage.completion_tokens == len(ref.token_ids)


def test_chat_logprobs_have_openais_shape(smol_server, smol):
    messages = [{"role": "user", "content": "Name a colour."}]
    client = smol_server.client()
    model = client.models.list().data[0].id
    kw = dict(model=model, messages=messages, max_tokens=8, temperature=0)
    response = client.chat.completions.create(logprobs=True, top_logprobs=3, **kw)
    out = response.choices[0]
    content = out.logprobs.content
    assert len(content) == response.usage.completion_tokens
    ref = smol.chat(messages, SamplingParams(max_tokens=8, temperature=0, logprobs=3))[0]
    assert [c.logprob for c in content] == pytest.approx(
        [lp.logprob for lp in ref.outputs[0].logprobs], abs=1e-3
    )
    for c in content:  # greedy: the chosen token is the most likely one
        assert len(c.top_logprobs) == 3 and c.top_logprobs[0].token == c.token
        assert c.top_logprobs[0].logprob == pytest.approx(c.logprob)
        assert bytes(c.bytes) == c.token.encode()
    words = "".join(c.token for c in content if c.token != "<|im_end|>")
    assert words == out.message.content
    plain = client.chat.completions.create(**kw).choices[0]
    assert plain.logprobs is None and plain.message.content == out.message.content


def test_braid_curate_runs_against_braid_serve(smol_server, tmp_path):
    """The protocol, the bounded retries and the rejects file, on real answers of a model too
    small to pass the content checks (whichever file the record lands in, it lands once)."""
    record = {"id": "r1", "sequential": "First add 2 and 3 to get 5. Then double 4 to get 8."}
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rejects = tmp_path / "rejects.jsonl"
    source.write_text(json.dumps(record) + "\n")
    model = smol_server.client().models.list().data[0].id
    before = scrape(smol_server)
    retries = 1
    cmd = [sys.executable, "-m", "braid.cli", "curate", "--input", str(source)]
    cmd += ["--output", str(out), "--rejects", str(rejects), "--model", model]
    cmd += ["--endpoint", smol_server.url + "/v1", "--max-retries", str(retries)]
    cmd += ["--concurrency", "1", "--no-progress", "--timeout", "120"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stderr.strip().splitlines()[-1])
    rows = [json.loads(x) for p in (out, rejects) if p.exists() for x in p.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r1"]
    if rejects.exists() and rejects.read_text().strip():
        (reject,) = [json.loads(x) for x in rejects.read_text().splitlines()]
        assert reject["stage"] and reject["reason"]
    assert sum(summary.values()) >= 1
    after = scrape(smol_server)
    served = sum(
        value(after, "vllm:request_success_total", finished_reason=r)
        - value(before, "vllm:request_success_total", finished_reason=r)
        for r in ("stop", "length")
    )
    # five stages, each asked at most 1 + retries times
    assert 1 <= served <= 5 * (1 + retries)
