"""Bad input: a clear exception in the API; exit code 2 and one line on the CLI."""

import json
import shutil
import subprocess
import sys

import pytest

from braid import LLM, InvalidRequestError, ModelLoadError, SamplingParams
from braid.cli import main
from braid.model.loader import load_model


def cli(*args, stdin=""):
    return subprocess.run(
        [sys.executable, "-m", "braid.cli", *args], input=stdin, capture_output=True, text=True
    )


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("braid: error:"), result.stderr
    for w in words:
        assert w in lines[0]


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        LLM(tmp_path / "nope")
    assert_one_line_error(
        cli("generate", "--model", str(tmp_path / "nope"), "--prompt", "hi"), "does not exist"
    )


def test_unsupported_architecture_names_the_field_and_choices(tmp_path, llama_dir):
    d = tmp_path / "gpt2"
    shutil.copytree(llama_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="LlamaForCausalLM"):
        LLM(d)
    assert_one_line_error(cli("info", "--model", str(d)), "GPT2LMHeadModel", "Qwen3ForCausalLM")


def test_corrupt_weights_name_the_file(tmp_path, llama_dir):
    d = tmp_path / "corrupt"
    shutil.copytree(llama_dir, d)
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        LLM(d)


def test_missing_weights_and_shape_mismatch(tmp_path, llama_dir):
    d = tmp_path / "noweights"
    shutil.copytree(llama_dir, d)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="safetensors"):
        LLM(d)
    d = tmp_path / "shape"
    shutil.copytree(llama_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="mlp.gate_proj.weight"):
        LLM(d)


def test_sharded_checkpoint_and_hf_cache_snapshot_load(tmp_path, llama_dir):
    from helpers import hf_model

    ref = hf_model(llama_dir)
    snap = tmp_path / "models--org--tiny" / "snapshots" / "abc123"
    ref.save_pretrained(snap, max_shard_size="100KB")
    assert (snap / "model.safetensors.index.json").exists()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama_dir / f, snap / f)
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("abc123")
    sharded, path = load_model(tmp_path / "models--org--tiny", "fp32")
    assert path == snap
    p = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    assert (
        LLM(tmp_path / "models--org--tiny", dtype="fp32").generate("fox", p)[0].token_ids
        == LLM(llama_dir, dtype="fp32").generate("fox", p)[0].token_ids
    )


def test_empty_prompt_and_prompt_longer_than_context(llama_dir):
    llm = LLM(llama_dir, dtype="fp32")
    with pytest.raises(InvalidRequestError, match="empty prompt"):
        llm.generate("")
    with pytest.raises(InvalidRequestError, match="context"):
        llm.generate([[1] * 300])
    assert_one_line_error(cli("generate", "--model", str(llama_dir), "--prompt", ""), "empty")
    assert_one_line_error(
        cli("generate", "--model", str(llama_dir), "--prompt", "a " * 400), "context"
    )


@pytest.mark.parametrize(
    "flag,value,word",
    [
        ("--temperature", "-1", "temperature"),
        ("--top-p", "0", "top_p"),
        ("--top-p", "1.2", "top_p"),
        ("--dtype", "int4", "dtype"),
        ("--max-tokens", "many", "max-tokens"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(llama_dir, flag, value, word):
    assert_one_line_error(
        cli("generate", "--model", str(llama_dir), "--prompt", "hi", flag, value), word
    )


def test_unknown_method(llama_dir):
    with pytest.raises(InvalidRequestError, match="available"):
        LLM(llama_dir).generate("hi", method="warp")


def test_main_returns_2_without_a_prompt(llama_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    assert main(["generate", "--model", str(llama_dir)]) == 2
    assert "no prompt" in capsys.readouterr().err
