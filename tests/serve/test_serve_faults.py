"""Load, cancellation and bad input against a real `braid serve`: nothing a client does leaks a
slot or stops the server, and its counters agree with Prometheus."""

import asyncio
import random

import httpx
import openai
import pytest
from servers import value, wait_idle

from braid import SamplingParams

WORDS = ["def", "import", "class", "return", "for", "while", "print", "self", "x", "yield"]


def test_48_concurrent_requests_with_a_quarter_cancelled(spec_server, offline_code):
    rng = random.Random(0)
    # 12 distinct requests, 4 copies of each, so 12 solo references cover all 48
    unique = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(12)]
    sizes = [rng.randint(4, 20) for _ in unique]
    prompts, lengths = unique * 4, sizes * 4
    cancel = set(rng.sample(range(48), 12))
    streaming = {i for i in range(48) if rng.random() < 0.5}
    client = spec_server.async_client(max_retries=0)

    async def one(i: int):
        kw = dict(model="code-23m", prompt=prompts[i], max_tokens=lengths[i], temperature=0)
        if i in streaming:
            stream = await client.completions.create(stream=True, **kw)
            text, cut = "", rng.randint(0, 3) if i in cancel else None
            async for k, chunk in _enumerate(stream):
                if cut is not None and k >= cut:  # dropped mid-stream (0: before any token)
                    await stream.close()
                    return None
                text += chunk.choices[0].text if chunk.choices else ""
            return text
        out = await client.completions.create(**kw)
        return out.choices[0].text

    async def main():
        tasks = [asyncio.create_task(one(i)) for i in range(48)]
        for i in cancel - streaming:  # non-streaming ones are cancelled at a random time
            asyncio.get_running_loop().call_later(rng.uniform(0.0, 1.5), tasks[i].cancel)
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    m = wait_idle(spec_server)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert value(m, name) == 0, name
    assert value(m, "braid:kv_cache_slots_used") == 0
    assert value(m, "braid:draft_cache_slots_used") == 0
    solo = [
        offline_code.generate([p], SamplingParams(max_tokens=n, temperature=0))[0].text
        for p, n in zip(unique, sizes)
    ]
    done = 0
    for i, result in enumerate(results):
        if isinstance(result, str):
            assert result == solo[i % 12], prompts[i]
            done += 1
        else:
            assert i in cancel, result
    assert done >= 36
    assert value(m, "vllm:request_success_total", finished_reason="abort") >= 1
    # and it goes on serving
    out = spec_server.client().completions.create(model="code-23m", prompt="def", max_tokens=3)
    assert out.usage.completion_tokens >= 1


async def _enumerate(stream):
    k = 0
    async for chunk in stream:
        yield k, chunk
        k += 1


def test_per_request_counters_sum_to_the_prometheus_deltas(spec_server):
    before = wait_idle(spec_server)
    client = spec_server.client()
    totals = dict(drafts=0, drafted=0, accepted=0, tokens=0, per_pos=0)
    for prompt, n in [("def add(a, b):\n", 30), ("import os\n", 17), ("class A:\n", 25)]:
        out = client.completions.create(model="code-23m", prompt=prompt, max_tokens=n, n=2)
        braid = out.model_extra["braid"]
        assert braid["drafted"] == out.model_extra["timings"]["draft_n"]
        totals["drafted"] += braid["drafted"]
        totals["accepted"] += braid["accepted"]
        totals["drafts"] += braid["drafts"]
        totals["tokens"] += out.usage.completion_tokens
    after = wait_idle(spec_server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert totals["drafted"] > 0 and totals["accepted"] > 0
    assert delta("vllm:spec_decode_num_draft_tokens_total") == totals["drafted"]
    assert delta("vllm:spec_decode_num_accepted_tokens_total") == totals["accepted"]
    assert delta("vllm:spec_decode_num_drafts_total") == totals["drafts"]
    assert delta("vllm:generation_tokens_total") == totals["tokens"]
    per_pos = sum(
        delta("vllm:spec_decode_num_accepted_tokens_per_pos_total", position=str(k))
        for k in range(8)
    )
    assert per_pos == totals["accepted"]


def bad_requests(model: str):
    """(name, path, body or raw bytes, expected status, a word the message must contain)."""
    c, ch = "/v1/completions", "/v1/chat/completions"
    ok = {"model": model, "prompt": "def", "max_tokens": 4}
    msgs = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return [
        ("malformed json", c, b'{"model": "x", "prompt": ', 400, "JSON"),
        ("prompt missing", c, {"model": model}, 400, "prompt"),
        ("prompt wrong type", c, {**ok, "prompt": 5}, 400, "prompt"),
        ("empty prompt", c, {**ok, "prompt": ""}, 400, "empty"),
        ("empty prompt list", c, {**ok, "prompt": []}, 400, "empty"),
        ("max_tokens negative", c, {**ok, "max_tokens": -3}, 400, "max_tokens"),
        ("max_tokens zero", c, {**ok, "max_tokens": 0}, 400, "max_tokens"),
        ("max_tokens huge", c, {**ok, "max_tokens": 10**9}, 400, "maximum context length"),
        ("max_tokens string", c, {**ok, "max_tokens": "ten"}, 400, "max_tokens"),
        ("max_tokens float", c, {**ok, "max_tokens": 2.5}, 400, "max_tokens"),
        ("temperature negative", c, {**ok, "temperature": -1}, 400, "temperature"),
        ("temperature string", c, {**ok, "temperature": "hot"}, 400, "temperature"),
        ("top_p zero", c, {**ok, "top_p": 0}, 400, "top_p"),
        ("top_p above one", c, {**ok, "top_p": 1.5}, 400, "top_p"),
        ("top_k float", c, {**ok, "top_k": 2.5}, 400, "top_k"),
        ("min_p above one", c, {**ok, "min_p": 3}, 400, "min_p"),
        ("n zero", c, {**ok, "n": 0}, 400, "n"),
        ("presence penalty", c, {**ok, "presence_penalty": 5}, 400, "presence_penalty"),
        ("stop wrong type", c, {**ok, "stop": 7}, 400, "stop"),
        ("empty stop string", c, {**ok, "stop": [""]}, 400, "stop"),
        ("token id out of range", c, {**ok, "prompt": [1, 10**7]}, 400, "token ids"),
        ("prompt over the context", c, {**ok, "prompt": "x " * 5000}, 400, "maximum context"),
        ("unknown model", c, {**ok, "model": "gpt-9"}, 404, "does not exist"),
        ("logprobs over the cap", c, {**ok, "logprobs": 21}, 400, "logprobs"),
        ("logprobs with echo", c, {**ok, "logprobs": 1, "echo": True}, 400, "echo"),
        ("top_logprobs alone", ch, {**msgs, "top_logprobs": 2}, 400, "logprobs"),
        ("min_tokens over max_tokens", c, {**ok, "min_tokens": 9}, 400, "min_tokens"),
        ("speculation wrong type", c, {**ok, "speculation": 3}, 400, "speculation"),
        (
            "speculation negative",
            c,
            {**ok, "speculation": {"num_speculative_tokens": -1}},
            400,
            "num_speculative_tokens",
        ),
        ("stream_options without stream", c, {**ok, "stream_options": {}}, 400, "stream"),
        ("empty messages", ch, {**msgs, "messages": []}, 400, "messages"),
        ("message without role", ch, {**msgs, "messages": [{"content": "hi"}]}, 400, "role"),
        (
            "role rejected",
            ch,
            {**msgs, "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "role",
        ),
        ("chat without a template", ch, msgs, 400, "template"),
        ("unknown route", "/v1/embeddings", ok, 404, "route"),
    ]


@pytest.mark.parametrize("case", bad_requests("code-23m"), ids=lambda c: c[0])
def test_bad_requests_get_their_json_error_and_the_server_keeps_serving(code_server, case):
    name, path, body, status, word = case
    if isinstance(body, bytes):
        headers = {**code_server.headers, "content-type": "application/json"}
        r = code_server.post(path, content=body, headers=headers)
    else:
        r = code_server.post(path, json=body)
    assert r.status_code == status, (name, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    assert word.lower() in error["message"].lower(), (name, error["message"])
    assert code_server.get("/health").status_code == 200


def test_the_official_client_sees_typed_errors(code_server):
    client = code_server.client(max_retries=0)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model="code-23m", prompt="def", max_tokens=10**6)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="def", max_tokens=2)
    wrong = openai.OpenAI(base_url=code_server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(code_server.url + "/health").status_code == 200  # open without the key
    assert httpx.get(code_server.url + "/metrics").status_code == 401
    out = client.completions.create(model="code-23m", prompt="def", max_tokens=2)
    assert out.usage.completion_tokens == 2 or out.choices[0].finish_reason == "stop"


def test_sigterm_drains_in_flight_requests_then_exits(tmp_path):
    import signal
    import threading

    from servers import start_server, stop_server

    server = start_server(["--model", "code-23m", "--dtype", "fp32"], tmp_path / "drain.log")
    try:
        client = server.client(max_retries=0)
        first = threading.Event()
        got = {}

        def consume():
            text, reason = "", None
            stream = client.completions.create(
                model="code-23m",
                prompt="def",
                max_tokens=120,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            for chunk in stream:
                first.set()
                if chunk.choices:
                    text += chunk.choices[0].text
                    reason = chunk.choices[0].finish_reason or reason
                got["usage"] = chunk.usage or got.get("usage")
            got["text"], got["reason"] = text, reason

        reader = threading.Thread(target=consume)
        reader.start()
        assert first.wait(60)
        server.process.send_signal(signal.SIGTERM)
        reader.join(60)
        assert got["reason"] == "length" and got["usage"].completion_tokens == 120
        # uvicorn re-raises the signal once it has shut down: the conventional exit status
        assert server.process.wait(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in server.log.read_text()
        with pytest.raises(httpx.TransportError):  # no longer listening
            httpx.get(server.url + "/health", timeout=2)
    finally:
        stop_server(server)
