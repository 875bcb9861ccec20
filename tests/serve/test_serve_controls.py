"""Per-request controls over HTTP (logprobs, min_tokens, speculation), /health while the model
loads, and a failure inside a stream, through the official openai client.

Servers are real `braid serve` subprocesses except where a failure or a loading state must be
produced on purpose: there the same app runs in process behind httpx's ASGI transport."""

import asyncio
from dataclasses import replace

import httpx
import openai
import pytest

from braid import SamplingParams
from braid.serve.app import build_app

PROMPT = "def add(a, b):\n"


def offline(llm, **kw):
    return llm.generate([PROMPT], SamplingParams(temperature=0, **kw))[0].outputs[0]


def test_completion_logprobs_equal_offline_streamed_or_not(code_server, offline_code):
    ref = offline(offline_code, max_tokens=12, logprobs=2)
    client = code_server.client()
    kw = dict(model="code-23m", prompt=PROMPT, max_tokens=12, temperature=0, logprobs=2)
    full = client.completions.create(**kw).choices[0].logprobs
    # the server runs 1 thread, this process all cores: fp32 sums split across threads differ
    # in the last bits (measured 1.4e-6 on a Zen 4 core pair), far below any real mismatch
    assert full.token_logprobs == pytest.approx([lp.logprob for lp in ref.logprobs], abs=1e-5)
    assert "".join(full.tokens) == ref.text  # ASCII code: each token decodes on its own
    assert full.text_offset[0] == 0 and full.text_offset[1] == len(full.tokens[0])
    tops = [{offline_code.tokenizer.decode([i]) for i, _ in lp.top} for lp in ref.logprobs]
    assert [set(t) for t in full.top_logprobs] == tops
    tokens, offsets = [], []
    for chunk in client.completions.create(stream=True, **kw):
        if chunk.choices and chunk.choices[0].logprobs:
            tokens += chunk.choices[0].logprobs.tokens
            offsets += chunk.choices[0].logprobs.text_offset
    assert tokens == full.tokens and offsets == full.text_offset


def test_min_tokens_over_http_equals_offline(code_server, offline_code):
    free = offline(offline_code, max_tokens=20, ignore_eos=True)
    stop = free.token_ids[1]
    kw = dict(max_tokens=20, stop_token_ids=[stop], min_tokens=6, ignore_eos=True)
    ref = offline(offline_code, **kw)
    assert len(ref.token_ids) >= 6
    out = code_server.client().completions.create(
        model="code-23m", prompt=PROMPT, temperature=0, extra_body=kw
    )
    assert out.choices[0].text == ref.text
    assert out.usage.completion_tokens == len(ref.token_ids)


def test_speculation_is_controlled_per_request_and_echoed(spec_server, offline_code):
    client = spec_server.client()
    base = dict(model="code-23m", prompt=PROMPT, max_tokens=24, temperature=0)
    ref = offline(offline_code, max_tokens=24).text
    runs = {}
    for name, spec in [
        ("default", None),
        ("off", {"enabled": False}),
        ("two", {"num_speculative_tokens": 2}),
        ("huge", {"num_speculative_tokens": 100}),
    ]:
        extra = {} if spec is None else {"speculation": spec}
        out = client.completions.create(extra_body=extra, **base)
        assert out.choices[0].text == ref  # speculation changes speed, never the text
        runs[name] = out.model_extra["braid"]
    assert runs["default"]["speculation"] == {"enabled": True, "num_speculative_tokens": 4}
    assert runs["off"]["speculation"] == {"enabled": False, "num_speculative_tokens": 0}
    assert runs["off"]["drafted"] == 0 and runs["off"]["passes"] == 24
    two = runs["two"]
    assert two["speculation"] == {"enabled": True, "num_speculative_tokens": 2, "requested": 2}
    assert 0 < two["drafted"] <= 2 * two["drafts"]
    huge = runs["huge"]["speculation"]
    assert huge == {"enabled": True, "num_speculative_tokens": 4, "requested": 100}  # clamped
    assert runs["default"]["drafted"] > 2 * runs["default"]["drafts"]


# -- in process: states a subprocess cannot be put in on purpose --------------------------------
def asgi_client(app) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://braid")
    return openai.AsyncOpenAI(base_url="http://braid/v1", api_key="none", http_client=http)


def test_health_is_503_while_the_model_loads():
    app = build_app(None)
    client = asgi_client(app)

    async def probe():
        health = await client._client.get("/health")
        models = await client._client.get("/v1/models")
        return health, models

    health, models = asyncio.run(probe())
    assert health.status_code == 503 and health.json() == {"status": "loading"}
    assert models.status_code == 503 and "loading" in models.json()["error"]["message"]


@pytest.fixture
def failing_app(offline_code):
    """An in-process server whose requests with user="fail" raise after three tokens (a
    logits processor that fails, which no HTTP client can send)."""
    from braid.engine.engine import Engine
    from braid.methods import MethodConfig, make_method
    from braid.serve.loop import EngineLoop
    from braid.serve.metrics import Metrics
    from braid.serve.serving import Serving

    llm = offline_code
    engine = Engine(llm.model, llm.tokenizer, make_method("ar"), max_batch=4)
    loop = EngineLoop(engine, Metrics("code-23m-inproc"))
    serving = Serving(llm, loop, "code-23m", MethodConfig("ar"))
    params = serving._params

    def with_fault(body):
        p = params(body)
        if body.user != "fail":
            return p

        def boom(ids, logits):
            if len(ids) >= 3:
                raise RuntimeError("injected failure")
            return logits

        return replace(p, logits_processors=[boom])

    serving._params = with_fault
    loop.start()
    yield build_app(serving), loop
    loop.stop()


def test_a_failure_inside_a_stream_sends_one_error_chunk_and_spares_its_neighbour(
    failing_app, offline_code
):
    app, loop = failing_app
    client = asgi_client(app)
    ref = offline(offline_code, max_tokens=16).text

    async def failing():
        texts = []
        stream = await client.completions.create(
            model="code-23m", prompt=PROMPT, max_tokens=16, temperature=0, stream=True, user="fail"
        )
        with pytest.raises(openai.APIError, match="injected failure"):
            async for chunk in stream:
                texts.append(chunk.choices[0].text if chunk.choices else "")
        return "".join(texts)

    async def healthy():
        out = await client.completions.create(
            model="code-23m", prompt=PROMPT, max_tokens=16, temperature=0
        )
        return out.choices[0].text

    async def both():
        return await asyncio.gather(failing(), healthy())

    partial, text = asyncio.run(both())
    assert text == ref and ref.startswith(partial)
    assert len(offline_code.tokenizer.encode(partial, special=False)) <= 3
    assert loop.in_flight == 0 and not loop.engine.has_unfinished
