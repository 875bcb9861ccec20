"""The command line on a tiny checkpoint: generate (args, file, stdin, JSON), info."""

import json
import subprocess
import sys


def braid(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "braid.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_json_batch_from_file_is_greedy_and_complete(llama_dir, tmp_path):
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"prompt": "The quick"}\n{"prompt": "def main"}\n')
    r = braid(
        "generate",
        "--model",
        str(llama_dir),
        "--prompts-file",
        str(f),
        "--json",
        "--temperature",
        "0",
        "--max-tokens",
        "5",
        "--ignore-eos",
        "--dtype",
        "fp32",
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["prompt"] for row in rows] == ["The quick", "def main"]
    from braid import LLM, SamplingParams

    expected = LLM(llama_dir, dtype="fp32").generate(
        ["The quick", "def main"], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    )
    assert [row["token_ids"] for row in rows] == [o.token_ids for o in expected]
    assert all(row["stats"]["generated_tokens"] == 5 for row in rows)


def test_generate_streams_a_stdin_prompt_and_prints_stats(llama_dir):
    r = braid(
        "generate",
        "--model",
        str(llama_dir),
        "--max-tokens",
        "4",
        "--seed",
        "1",
        "--stats",
        stdin="The quick\n",
    )
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stderr.strip().splitlines()[-1])
    assert stats["prompt_tokens"] > 0 and stats["generated_tokens"] <= 4


def test_info_reports_the_checkpoint(llama_dir):
    r = braid("info", "--model", str(llama_dir), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["vocab_size"] == 320 and info["layers"] == 2 and info["context_length"] == 256
    from helpers import hf_model

    # counted from the safetensors headers; tied embeddings are stored (and counted) once
    assert info["parameters"] == sum(p.numel() for p in hf_model(llama_dir).parameters())


def test_help_explains_every_command():
    r = braid("--help")
    assert r.returncode == 0
    for command in ("generate", "info", "models", "bench", "train-lm"):
        assert command in r.stdout
