"""`braid chat`, `braid generate --chat`, readable batch output, generation defaults and `braid
convert` / `braid info` on tiny checkpoints with a chat template, through the real CLI."""

from __future__ import annotations

import json
import shutil

import pytest
from test_cli import braid

from braid import LLM, SamplingParams

TEMPLATE = (
    "{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_dir(llama_dir, tmp_path_factory):
    """The tiny llama with a ChatML-like template and greedy generation defaults."""
    d = tmp_path_factory.mktemp("chat") / "m"
    shutil.copytree(llama_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps(cfg | {"chat_template": TEMPLATE}))
    (d / "generation_config.json").write_text(json.dumps({"do_sample": False, "top_k": 5}))
    return d


def test_generation_config_defaults_are_honoured_unless_set(chat_dir):
    llm = LLM(chat_dir, dtype="fp32")
    default = llm.generate("The quick", SamplingParams(max_tokens=8, ignore_eos=True))[0]
    greedy = llm.generate("The quick", SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    assert default.token_ids == greedy[0].token_ids  # do_sample false: greedy by default
    sampled = [
        llm.generate("The quick", SamplingParams(max_tokens=8, temperature=5.0, seed=s))[0]
        for s in range(4)
    ]
    assert len({tuple(o.token_ids) for o in sampled}) > 1  # an explicit temperature wins


def test_chat_reads_turns_from_stdin_and_resets(chat_dir):
    r = braid(
        "chat", "--model", str(chat_dir), "--dtype", "fp32", "--max-tokens", "4",
        "--ignore-eos", "--stats", "--system", "Be brief.",
        stdin="hello\n/reset\nagain\n/bogus\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    answers = r.stdout.splitlines()
    llm = LLM(chat_dir, dtype="fp32")
    system = {"role": "system", "content": "Be brief."}
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    first = llm.chat([system, {"role": "user", "content": "hello"}], params)[0].text
    second = llm.chat([system, {"role": "user", "content": "again"}], params)[0].text
    assert "".join(answers) == first + second  # /reset: the second turn saw no first turn
    assert "(new conversation)" in r.stderr and "unknown command /bogus" in r.stderr
    stats = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    assert [s["generated_tokens"] for s in stats] == [4, 4]


def test_generate_chat_and_batch_output_are_labelled(chat_dir, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("The quick\ndef main\n")
    r = braid(
        "generate", "--model", str(chat_dir), "--dtype", "fp32", "--prompts-file", str(f),
        "--chat", "--max-tokens", "3", "--ignore-eos", "--stats",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "[0] prompt: '<|endoftext|>user\\nThe quick" in r.stdout
    assert "[1] prompt: '<|endoftext|>user\\ndef main" in r.stdout
    stats = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    assert [s["index"] for s in stats] == [0, 1]
    assert all(s["finish_reason"] == "length" for s in stats)


def test_help_shows_defaults_and_system_needs_chat(chat_dir):
    r = braid("generate", "--help")
    assert "default: the model's generation_config, else 1.0" in r.stdout
    assert "(default: auto)" in r.stdout  # --gamma
    r = braid("generate", "--model", str(chat_dir), "--prompt", "x", "--system", "s")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--system needs --chat" in r.stderr


def test_chat_without_a_template_is_one_line(llama_dir):
    r = braid("chat", "--model", str(llama_dir), "--dtype", "fp32", stdin="hi\n")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "chat template" in r.stderr


def test_convert_and_info(tmp_path, model_dirs):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "model"))
    from gguf_files import write_gguf

    path = write_gguf(model_dirs["llama"], tmp_path / "m.gguf", "llama", "Q8_0")
    r = braid("convert", str(path), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.safetensors").exists()
    again = braid("convert", str(path), str(tmp_path / "out"))
    assert again.returncode == 2 and "not empty" in again.stderr
    info = json.loads(braid("info", "--model", str(path), "--json").stdout)
    assert info["format"] == "gguf" and "Q8_0 x" in info["weights"] and info["layers"] == 2
    text = braid("info", "--model", str(tmp_path / "out")).stdout
    assert "architecture" in text and "LlamaForCausalLM" in text and "{" not in text


def test_max_tokens_beyond_the_context_is_cut_and_said(tmp_path):
    from helpers import make_hf_model

    d = make_hf_model("llama", tmp_path / "short", max_position_embeddings=16)
    r = braid(
        "generate", "--model", str(d), "--dtype", "fp32", "--prompt", "The quick brown",
        "--max-tokens", "10000", "--ignore-eos", "--stats",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    warning = [line for line in r.stderr.splitlines() if line.startswith("braid: warning:")]
    assert len(warning) == 1 and "maximum context length is 16 tokens" in warning[0]
    stats = json.loads(r.stderr.splitlines()[-1])
    assert stats["finish_reason"] == "length"
    assert stats["prompt_tokens"] + stats["generated_tokens"] == 16


def test_a_turn_that_fails_is_reported_and_the_chat_goes_on(chat_dir):
    """A turn longer than the 256-token context: one error line, that turn dropped, next ok."""
    long = " ".join(["word"] * 400)
    r = braid(
        "chat", "--model", str(chat_dir), "--dtype", "fp32", "--max-tokens", "3",
        "--ignore-eos", stdin=f"{long}\nhello\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("braid: error:")]
    assert len(errors) == 1 and "context" in errors[0]
    llm = LLM(chat_dir, dtype="fp32")
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    expected = llm.chat([{"role": "user", "content": "hello"}], params)[0].text
    assert r.stdout.strip().splitlines()[-1] == expected.strip()
