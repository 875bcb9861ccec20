"""The Curator: its protocol against a local fake OpenAI-compatible server (real HTTP on
127.0.0.1, scripted stage replies) and its checks on real examples from the task family, with
the edit distance recomputed by a plain dynamic programme written here from the definition."""

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from braid.errors import InvalidRequestError
from braid.multiverse import grammar
from braid.multiverse.curator import (
    CurateOptions,
    EndpointConfig,
    EndpointError,
    content_distance,
    content_problem,
    curate_file,
    grammar_problem,
)
from braid.multiverse.tags import PARALLEL_SENTENCE, TAGS
from braid.multiverse.tasks import Knobs, make_tasks

# -- real examples ----------------------------------------------------------------------------

TASKS = list(make_tasks(4, seed=21, knobs=Knobs(max_parts=3)))


def without_goals(multiverse: str) -> str:
    """What the refill stage should return for a task: the structure before Goals are added."""
    text = re.sub(r"<Goal>.*?</Goal>\n", "", multiverse, flags=re.DOTALL)
    return re.sub(r"(?m)^\d+(\.\d+)*: ", "", text.replace(PARALLEL_SENTENCE + "\n", ""))


def only_first_path(multiverse: str) -> str:
    """A refill that lost every path but the first (and the answer)."""
    return without_goals(multiverse).split("</Path>")[0] + "</Path>\n</Parallel>\n</Think>\n"


def drop_second_outline(multiverse: str) -> str:
    start = multiverse.index("<Outline>\n2:")
    return multiverse[:start] + multiverse[multiverse.index("</Outline>", start) + 11 :]


# -- reference edit distance, from the definition ---------------------------------------------


def reference_plain(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.strip() in TAGS:
            continue
        line = line.replace(PARALLEL_SENTENCE, "")
        line = re.sub(r"^\s*\d+(\.\d+)*:\s*", "", line)
        lines.append(line)
    return " ".join(" ".join(lines).split())


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def reference_distance(original: str, restructured: str) -> float:
    a, b = reference_plain(original), reference_plain(restructured)
    return levenshtein(a, b) / max(len(a), len(b), 1)


def test_content_check_on_real_examples_matches_the_reference():
    for task in TASKS[:2]:
        for restructured, passes in [
            (without_goals(task.multiverse), True),  # a faithful refill
            (task.multiverse, None),  # the final form, outlines included
            (only_first_path(task.multiverse), False),  # content lost
        ]:
            ref = reference_distance(task.sequential, restructured)
            assert content_distance(task.sequential, restructured) == pytest.approx(ref, abs=1e-12)
            if passes is not None:
                assert (ref <= 0.2) is passes
            problem = content_problem(task.sequential, restructured, 0.2)
            assert (problem is None) == (ref <= 0.2)
            if problem:
                assert "content check failed" in problem and f"{ref:.3f}" in problem


def test_grammar_check_on_real_examples():
    for task in TASKS:
        assert grammar_problem(task.multiverse) is None
        problem = grammar_problem(drop_second_outline(task.multiverse))
        assert problem.startswith("grammar check failed: line ") and "Outline" in problem
    assert "no <Parallel>" in grammar_problem(TASKS[0].sequential)


# -- the fake endpoint -----------------------------------------------------------------------


class FakeEndpoint:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 with scripted replies.

    script[key][stage] is a list of replies for the record whose text contains `key`; replies
    are used in order and the last one repeats. A reply may be (status, body) for an HTTP error.
    """

    def __init__(self, script: dict, delay_s: float = 0.0):
        self.script, self.delay_s = script, delay_s
        self.requests: list[dict] = []
        self.counts: dict = {}
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, reply = fake.answer(self.path, dict(self.headers), body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answer(self, path: str, headers: dict, body: dict):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
            stage = int(re.search(r"stage (\d)/5", body["messages"][0]["content"]).group(1))
            user = body["messages"][1]["content"]
            keys = [k for k in self.script if k in user]
            assert len(keys) == 1, f"request matches {len(keys)} records"
            with self.lock:
                self.requests.append(
                    {"path": path, "headers": headers, "body": body, "key": keys[0], "stage": stage}
                )
                n = self.counts.get((keys[0], stage), 0)
                self.counts[(keys[0], stage)] = n + 1
            replies = self.script[keys[0]][stage]
            reply = replies[min(n, len(replies) - 1)]
            if isinstance(reply, tuple):
                return reply
            return 200, {
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]
            }
        finally:
            with self.lock:
                self.in_flight -= 1

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def key_of(task) -> str:
    """A line of the task's text that every stage's request carries."""
    return task.sequential.splitlines()[0]


def good_script(task) -> dict:
    return {
        1: ["1: Work out each part.\n2: Combine them."],
        2: ["1.1, 1.2"],
        3: ["<Think>\n<Parallel>\n<Path>\n[step 1.1]\n</Path>\n</Parallel>\n</Think>"],
        4: [without_goals(task.multiverse)],
        5: ["```\n" + task.multiverse + "```"],  # a fenced reply is unwrapped
    }


@pytest.fixture
def fake():
    servers = []

    def start(script, delay_s=0.0):
        servers.append(FakeEndpoint(script, delay_s))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def write_input(tmp_path, tasks, ids=None):
    path = tmp_path / "in.jsonl"
    rows = [
        {"id": ids[i] if ids else f"t{i}", "prompt": t.prompt, "sequential": t.sequential}
        for i, t in enumerate(tasks)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def opts(**kw):
    return CurateOptions(progress=False, retry_delay_s=0.0, **kw)


def test_success_path_protocol_and_outputs(fake, tmp_path):
    for t in TASKS:  # each record's key is in its own text only
        assert [key_of(t) in u.sequential for u in TASKS] == [u is t for u in TASKS]
    server = fake({key_of(t): good_script(t) for t in TASKS[:3]})
    config = EndpointConfig.resolve(server.url, "curator-model", "sk-test")
    out = tmp_path / "out.jsonl"
    summary = curate_file(write_input(tmp_path, TASKS[:3]), out, config, opts(concurrency=2))
    assert summary.as_dict() == {"curated": 3, "rejected": 0, "skipped": 0, "duplicates": 0}
    rows = {r["id"]: r for r in read(out)}
    assert sorted(rows) == ["t0", "t1", "t2"] and read(out.with_suffix(".rejects.jsonl")) == []
    for i, task in enumerate(TASKS[:3]):
        row = rows[f"t{i}"]
        assert row["multiverse"] == task.multiverse.strip()
        grammar.parse(row["multiverse"])
        assert row["prompt"] == task.prompt and row["sequential"] == task.sequential
        assert row["curator"]["model"] == "curator-model"
        assert row["curator"]["attempts"] == {s: 1 for s in row["curator"]["attempts"]}
        ref = reference_distance(task.sequential, without_goals(task.multiverse))
        assert row["curator"]["content_distance"] == pytest.approx(ref, abs=1e-4)
        mine = [r for r in server.requests if r["key"] == key_of(task)]
        assert sorted(r["stage"] for r in mine) == [1, 2, 3, 4, 5]
        by_stage = {r["stage"]: r for r in mine}
        for r in mine:
            assert r["path"] == "/v1/chat/completions"
            assert r["headers"]["Authorization"] == "Bearer sk-test"
            assert r["body"]["model"] == "curator-model"
            assert [m["role"] for m in r["body"]["messages"]] == ["system", "user"]
        users = {s: r["body"]["messages"][1]["content"] for s, r in by_stage.items()}
        script = good_script(task)
        for s in (1, 2, 3, 4):
            assert task.sequential in users[s]  # the original text in every early stage
        assert script[1][0] in users[2] and script[1][0] in users[3]  # the tree is passed on
        assert script[2][0] in users[3]  # the groups too
        assert script[3][0] in users[4]  # the skeleton is refilled
        assert script[4][0].strip() in users[5]  # the refill gets its Goals and Conclusions
    assert server.max_in_flight <= 2


def test_content_failure_is_asked_again_with_the_reason(fake, tmp_path):
    task = TASKS[0]
    bad = only_first_path(task.multiverse)
    assert reference_distance(task.sequential, bad) > 0.2
    server = fake({key_of(task): good_script(task) | {4: [bad, without_goals(task.multiverse)]}})
    out = tmp_path / "out.jsonl"
    config = EndpointConfig.resolve(server.url, "m")
    summary = curate_file(write_input(tmp_path, [task]), out, config, opts(max_retries=2))
    assert summary.curated == 1 and summary.rejected == 0
    (row,) = read(out)
    assert row["curator"]["attempts"]["refill"] == 2
    retry = [r for r in server.requests if r["stage"] == 4][1]["body"]["messages"]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert retry[2]["content"] == bad.strip()
    assert "content check failed" in retry[3]["content"]


def test_grammar_failure_goes_to_rejects_after_the_retries(fake, tmp_path):
    task = TASKS[1]
    broken = drop_second_outline(task.multiverse)
    server = fake({key_of(task): good_script(task) | {5: [broken]}})
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    config = EndpointConfig.resolve(server.url, "m")
    summary = curate_file(
        write_input(tmp_path, [task]), out, config, opts(max_retries=1), rejects_path=rejects
    )
    assert summary.curated == 0 and summary.rejected == 1 and read(out) == []
    (row,) = read(rejects)
    assert row["id"] == "t0" and row["stage"] == "goal and conclusion"
    assert row["reason"] == grammar_problem(broken) and "line " in row["reason"]
    assert row["last_output"] == broken.strip()
    assert server.counts[(key_of(task), 5)] == 2  # the first try and one retry


def test_resumes_by_skipping_ids_in_output_and_rejects(fake, tmp_path):
    server = fake({key_of(t): good_script(t) for t in TASKS[:3]})
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    out.write_text('{"id": "a", "multiverse": "done before"}\n{"id": "x", "multi')  # cut short
    rejects.write_text('{"id": "b", "stage": "refill", "reason": "earlier"}\n')
    path = write_input(tmp_path, TASKS[:3], ids=["a", "b", "c"])
    config = EndpointConfig.resolve(server.url, "m")
    summary = curate_file(path, out, config, opts(), rejects_path=rejects)
    assert summary.as_dict() == {"curated": 1, "rejected": 0, "skipped": 2, "duplicates": 0}
    assert {r["key"] for r in server.requests} == {key_of(TASKS[2])}
    lines = out.read_text().splitlines()
    assert lines[0] == '{"id": "a", "multiverse": "done before"}'  # appended, not rewritten
    assert json.loads(lines[-1])["id"] == "c"
    again = curate_file(path, out, config, opts(), rejects_path=rejects)
    assert again.as_dict() == {"curated": 0, "rejected": 0, "skipped": 3, "duplicates": 0}


def test_transient_errors_are_retried_and_bad_records_rejected_with_a_reason(fake, tmp_path):
    task = TASKS[0]
    server = fake({key_of(task): good_script(task) | {2: [(500, {"error": "busy"}), "1, 2"]}})
    path = tmp_path / "in.jsonl"
    rows = [{"id": "ok", "text": task.sequential}, {"id": "empty", "text": " "}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    out = tmp_path / "out.jsonl"
    config = EndpointConfig.resolve(server.url, "m")
    summary = curate_file(path, out, config, opts())
    assert summary.curated == 1 and summary.rejected == 2
    assert server.counts[(key_of(task), 2)] == 2
    rejected = {r["id"]: r for r in read(out.with_suffix(".rejects.jsonl"))}
    assert "no non-empty text field" in rejected["empty"]["reason"]
    assert rejected["in.jsonl:3"]["reason"] == "line 3 is not a JSON object"


def test_an_unusable_endpoint_stops_the_run(fake, tmp_path):
    task = TASKS[0]
    server = fake({key_of(task): {s: [(401, {"error": "bad key"})] for s in range(1, 6)}})
    config = EndpointConfig.resolve(server.url, "m")
    with pytest.raises(EndpointError, match="401"):
        curate_file(write_input(tmp_path, [task]), tmp_path / "o.jsonl", config, opts())
    port = server.server.server_address[1]
    server.close()  # nothing listens there now
    dead = EndpointConfig.resolve(f"http://127.0.0.1:{port}/v1", "m")
    with pytest.raises(EndpointError, match="cannot reach"):
        curate_file(write_input(tmp_path, [task]), tmp_path / "o.jsonl", dead, opts())


def test_endpoint_settings_come_from_flags_then_environment(monkeypatch):
    for var in ("BRAID_CURATOR_BASE_URL", "BRAID_CURATOR_MODEL", "BRAID_CURATOR_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(InvalidRequestError, match="--endpoint"):
        EndpointConfig.resolve()
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1/")
    monkeypatch.setenv("OPENAI_MODEL", "o")
    monkeypatch.setenv("BRAID_CURATOR_MODEL", "b")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    c = EndpointConfig.resolve()
    assert (c.base_url, c.model, c.api_key) == ("http://127.0.0.1:1/v1", "b", "k")
    assert EndpointConfig.resolve(model="flag").model == "flag"
    with pytest.raises(InvalidRequestError, match="http"):
        EndpointConfig.resolve("127.0.0.1:8000")


def test_curate_command(fake, tmp_path, monkeypatch):
    from braid.multiverse.data_cli import add_parsers

    task = TASKS[2]
    server = fake({key_of(task): good_script(task)})
    monkeypatch.setenv("BRAID_CURATOR_BASE_URL", server.url)
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    out = tmp_path / "out.jsonl"
    args = parser.parse_args(
        ["curate", "--input", str(write_input(tmp_path, [task])), "--output", str(out)]
        + ["--model", "m", "--no-progress", "--concurrency", "3", "--threshold", "0.1"]
    )
    assert args.func(args) == 0
    assert read(out)[0]["multiverse"] == task.multiverse.strip()
    args = parser.parse_args(
        ["curate", "--input", "i", "--output", "o", "--model", "m", "--concurrency", "0"]
    )
    with pytest.raises(InvalidRequestError, match="--concurrency"):
        args.func(args)
