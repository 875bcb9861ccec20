"""The benchmark runner on a tiny random config: shape of the report and a correctness check."""

import json

from braid.bench import report, runner
from braid.bench.models import random_checkpoint, streamed_weight_bytes


def test_runner_reports_every_contender_and_agrees_with_transformers(tmp_path):
    d = random_checkpoint("tiny", tmp_path / "tiny")
    result = runner.run(
        [("tiny", d)],
        ["ar"],
        peer="transformers",
        batches=(1, 3),
        prompt_len=8,
        new_tokens=6,
        runs=1,
        warmup=0,
        dtype="fp32",
        threads=1,
        show_progress=False,
    )
    rows = result["rows"]
    assert [(r["batch"], r["contender"]) for r in rows] == [
        (1, "ar"),
        (1, "transformers"),
        (3, "ar"),
        (3, "transformers"),
    ]
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["roofline"] > 0
    ar = [r for r in rows if r["contender"] == "ar"]
    # fp32 greedy: braid and transformers produce the same tokens for every prompt
    assert [r["same_tokens"] for r in ar] == ["1/1", "3/3"]
    assert all(r["tokens_per_pass"] == 1.0 for r in ar)
    out = tmp_path / "r.md"
    report.write(result, out, "braid bench --config tiny")
    table = out.read_text()
    assert "| tiny | 3 | random | ar |" in table and "GB/s" in table
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["new_tokens"] == 6


def test_streamed_bytes_count_the_head_once_and_skip_the_embedding_gather(tmp_path):
    import transformers as tf

    d = random_checkpoint("tiny", tmp_path / "tiny")
    model = tf.AutoModelForCausalLM.from_pretrained(d)
    params = sum(p.numel() for p in model.parameters())  # tied: embedding == head, once
    assert streamed_weight_bytes(d) == 2 * params


def test_assisted_peer_runs_at_batch_1_and_agrees_with_spec(tmp_path):
    target = random_checkpoint("tiny", tmp_path / "tiny")
    draft = random_checkpoint("tiny", tmp_path / "tiny-draft", seed=1)
    result = runner.run(
        [("tiny", target)],
        ["ar", "spec"],
        peer="transformers-assisted",
        batches=(1, 2),
        prompt_len=8,
        new_tokens=6,
        runs=1,
        warmup=0,
        dtype="fp32",
        threads=1,
        draft=draft,
        show_progress=False,
        gamma=3,
    )
    rows = [(r["batch"], r["contender"]) for r in result["rows"]]
    # transformers' assisted generation is batch-1 only, so it is absent at batch 2
    assert rows == [(1, "ar"), (1, "spec"), (1, "transformers-assisted"), (2, "ar"), (2, "spec")]
    spec = result["rows"][1]
    assert spec["same_tokens"] == "1/1"  # both exact greedy: identical tokens
    assert result["settings"]["peer"] == "transformers-assisted"


def test_text_prompt_groups_get_a_row_each_and_ragged_batches_agree(tmp_path):
    d = random_checkpoint("tiny", tmp_path / "tiny")
    texts = {"short": ["t5 t6 t7", "t9", "t40 t41"], "long": ["t1 t2 t3 t4 t5 t6 t7 t8"]}
    result = runner.run(
        [("tiny", d)],
        ["ar"],
        batches=(2,),
        new_tokens=5,
        runs=1,
        warmup=0,
        dtype="fp32",
        threads=1,
        show_progress=False,
        texts=texts,
    )
    rows = [(r["prompts"], r["contender"], r["same_tokens"]) for r in result["rows"]]
    assert rows == [
        ("short", "ar", "3/3"),
        ("short", "transformers", ""),
        ("long", "ar", "1/1"),
        ("long", "transformers", ""),
        ("overall", "ar", ""),
        ("overall", "transformers", ""),
    ]
    # overall: all tokens over all seconds (15 tokens in 15 / tps_short s, 5 in 5 / tps_long s)
    by = {(r["prompts"], r["contender"]): r for r in result["rows"]}
    for who in ("ar", "transformers"):
        seconds = 15 / by["short", who]["tokens_per_s"] + 5 / by["long", who]["tokens_per_s"]
        assert abs(by["overall", who]["tokens_per_s"] - 20 / seconds) < 1e-6
    ratio = by["overall", "ar"]["tokens_per_s"] / by["overall", "transformers"]["tokens_per_s"]
    assert abs(by["overall", "ar"]["vs_peer"] - ratio) < 1e-9


def test_specbench_first_turns_are_grouped_by_subtask():
    from braid.bench.prompts import SPECBENCH, specbench

    if not SPECBENCH.exists():  # the shared data sits beside the repository in this workspace
        import pytest

        pytest.fail(f"Spec-Bench prompts missing at {SPECBENCH}")
    groups = specbench(None, per_category=100)
    assert set(groups) == {
        "multi_turn",
        "translation",
        "summarization",
        "qa",
        "math_reasoning",
        "rag",
    }
    assert all(len(v) == 80 for v in groups.values())


def test_sampled_runs_are_seeded_per_prompt(tmp_path):
    d = random_checkpoint("tiny", tmp_path / "tiny")
    draft = random_checkpoint("tiny", tmp_path / "tiny-draft", seed=1)
    result = runner.run(
        [("tiny", d)],
        ["ar", "block"],
        peer="none",
        batches=(2,),
        prompt_len=8,
        new_tokens=5,
        runs=2,
        warmup=0,
        dtype="fp32",
        threads=1,
        draft=draft,
        show_progress=False,
        temperature=1.0,
    )
    assert result["settings"]["temperature"] == 1.0
    assert [r["contender"] for r in result["rows"]] == ["ar", "block"]
    assert result["rows"][1]["tokens_per_pass"] >= 1.0


def test_overall_rows_pool_tokens_time_passes_and_drafts_over_groups():
    R = runner.Row
    rows = [
        R("m", 1, "ar", 100.0, prompts="a", tokens=200, tokens_per_pass=1.0),
        R(
            "m",
            1,
            "spec",
            400.0,
            prompts="a",
            tokens=200,
            tokens_per_pass=4.0,
            drafted=100,
            acceptance=0.9,
        ),
        R("m", 1, "ar", 50.0, prompts="b", tokens=100, tokens_per_pass=1.0),
        R(
            "m",
            1,
            "spec",
            50.0,
            prompts="b",
            tokens=100,
            tokens_per_pass=1.25,
            drafted=300,
            acceptance=0.1,
        ),
    ]
    ar, spec = runner.overall_rows(rows)
    assert (ar.prompts, ar.tokens_per_s, ar.tokens) == ("overall", 300 / 4.0, 300)
    assert spec.tokens_per_s == 300 / 2.5  # 0.5 s + 2 s
    assert spec.vs_ar == (300 / 2.5) / (300 / 4.0)
    assert spec.tokens_per_pass == 300 / (50 + 80)  # passes: 200 / 4 + 100 / 1.25
    assert abs(spec.acceptance - (90 + 30) / 400) < 1e-12


def test_chat_turns_render_each_text_under_the_models_template():
    """`braid bench --chat`: a text prompt becomes the ids of one user turn under the model's
    template, as transformers renders it; token-id prompts pass through."""
    from transformers import AutoTokenizer

    from braid import LLM
    from braid.bench.prompts import chat_turns

    llm = LLM(threads=1)  # SmolLM2-135M-Instruct, whose GGUF carries its template
    hf = AutoTokenizer.from_pretrained(llm.model_dir)
    turn = [{"role": "user", "content": "Summarize: the cat sat on the mat."}]
    text = hf.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    groups = chat_turns({"g": [turn[0]["content"], [5, 6, 7]]}, llm.chat_prompt)
    assert groups["g"][0] == hf.encode(text, add_special_tokens=False)
    assert groups["g"][1] == [5, 6, 7]
