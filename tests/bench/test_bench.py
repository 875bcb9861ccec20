"""The benchmark runner on a tiny random config: shape of the report and a correctness check."""

import json

from braid.bench import report, runner
from braid.bench.models import random_checkpoint, streamed_weight_bytes


def test_runner_reports_every_contender_and_agrees_with_transformers(tmp_path):
    d = random_checkpoint("tiny", tmp_path / "tiny")
    result = runner.run(
        [("tiny", d)],
        ["ar"],
        peer=True,
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
    assert "| tiny | 3 | ar |" in table and "GB/s" in table
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["new_tokens"] == 6


def test_streamed_bytes_count_the_head_once_and_skip_the_embedding_gather(tmp_path):
    import transformers as tf

    d = random_checkpoint("tiny", tmp_path / "tiny")
    model = tf.AutoModelForCausalLM.from_pretrained(d)
    params = sum(p.numel() for p in model.parameters())  # tied: embedding == head, once
    assert streamed_weight_bytes(d) == 2 * params
