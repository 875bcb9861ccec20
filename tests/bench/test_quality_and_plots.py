"""Validation prompts, quality measures, energy n/a, plots and the bench CLI around them."""

import hashlib
import json
import math
import subprocess
import sys

import pytest
import torch
from helpers import hf_model

from braid.bench import energy, prompts, quality, report, runner
from braid.bench.models import random_checkpoint
from braid.bench.plot import plot_speedup, speedups
from braid.model.tokenizer import Tokenizer


def is_held_out(name: str) -> bool:
    """The documented split rule, written here from its definition."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % 10_000 < 200


def corpus_dir(root):
    """A corpus of small 'files': the first 3 names the rule holds out, and 20 training ones."""
    root.mkdir()
    names = [f"mod{i}.py" for i in range(3000)]
    held = [n for n in names if is_held_out(n)][:3]
    for i, name in enumerate(held + [n for n in names if not is_held_out(n)][:20]):
        words = " ".join(f"w{i}_{j} = {j} * {i}" for j in range(40))
        (root / name).write_text(f"# module {i}\n{words}\n")
    return root


def held_out(root) -> list[str]:
    return [p.read_text() for p in sorted(root.iterdir()) if is_held_out(p.name)]


def test_validation_prompts_are_seeded_cuts_of_held_out_documents(llama_dir, tmp_path):
    root = corpus_dir(tmp_path / "corpus")
    docs = held_out(root)
    assert docs, "the fixture corpus needs at least one validation file"
    tok = Tokenizer(llama_dir)
    encoded = [tok.encode(d) for d in docs]
    got = prompts.validation(tok, count=5, prompt_len=16, new_tokens=20, data=root)
    assert list(got) == ["validation"] and len(got["validation"]) == 5
    for p in got["validation"]:
        assert len(p) == 16
        # the prompt sits in a held-out document with >= new_tokens real tokens after it
        assert any(
            ids[i : i + 16] == p and len(ids) - (i + 16) >= 20
            for ids in encoded
            for i in range(len(ids) - 15)
        )
    again = prompts.validation(tok, count=5, prompt_len=16, new_tokens=20, data=root)
    other = prompts.validation(tok, count=5, prompt_len=16, new_tokens=20, data=root, seed=1)
    assert again == got and other != got
    with pytest.raises(Exception, match="no validation document"):
        prompts.validation(tok, count=1, prompt_len=10_000, new_tokens=1, data=root)


def test_output_nll_equals_transformers_log_likelihood(llama_dir):
    from braid import LLM

    llm = LLM(llama_dir, dtype="fp32")
    prompt, output = [5, 17, 99, 3], [42, 7, 250, 11, 64]
    ref = hf_model(llama_dir)
    with torch.no_grad():
        logits = ref(torch.tensor([prompt + output])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    want = -sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(output))
    assert quality.output_nll(llm.model, prompt, output) == pytest.approx(want, rel=1e-5)
    ppl = quality.perplexity(llm.model, [prompt, prompt], [output, output[:2]])
    nll2 = quality.output_nll(llm.model, prompt, output[:2])
    assert ppl == pytest.approx(math.exp((want + nll2) / 7), rel=1e-5)


def test_empirical_tv_by_hand():
    a = [(1, 2)] * 3 + [(0, 0)]
    b = [(1, 2)] * 2 + [(5, 5)] * 2
    assert quality.empirical_tv(a, b) == pytest.approx(0.5 * (0.25 + 0.25 + 0.5))
    assert quality.empirical_tv(a, a) == 0


def test_quality_columns_in_the_runner_and_report(tmp_path):
    d = random_checkpoint("tiny", tmp_path / "tiny")
    draft = random_checkpoint("tiny", tmp_path / "tiny-draft", seed=1)
    q = runner.Quality(prompts=2, seeds=6)
    result = runner.run(
        [("tiny", d)],
        ["ar", "mtad"],
        peer="none",
        batches=(1, 2),
        prompt_len=6,
        new_tokens=4,
        runs=1,
        warmup=0,
        dtype="fp32",
        threads=1,
        draft=draft,
        show_progress=False,
        texts=lambda tok: {"ids": [[5, 6, 7], [9, 10], [11, 12, 13, 14]]},
        temperature=1.0,
        quality=q,
    )
    rows = result["rows"]
    assert [(r["batch"], r["prompts"], r["contender"]) for r in rows] == [
        (1, "ids", "ar"),
        (1, "ids", "mtad"),
        (2, "ids", "ar"),
        (2, "ids", "mtad"),
    ]
    for r in rows:
        assert r["perplexity"] > 1 and 0 <= r["tv_vs_ar"] <= 1
    # seeded outputs do not depend on the batch, so neither does their quality
    assert rows[0]["perplexity"] == rows[2]["perplexity"]
    table = report.markdown(result)
    assert "ppl (target)" in table and "TV first tokens vs ar" in table
    assert result["settings"]["quality"] == {"prompts": 2, "seeds": 6, "k": 2, "batch": 8}
    plain = runner.run(
        [("tiny", d)],
        ["ar"],
        peer="none",
        batches=(1,),
        prompt_len=4,
        new_tokens=2,
        runs=1,
        warmup=0,
        dtype="fp32",
        threads=1,
        show_progress=False,
    )
    assert "ppl (target)" not in report.markdown(plain)  # timing tables stay clean


def test_energy_is_na_with_the_reason_when_no_counter_is_readable(tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "POWERCAP", tmp_path)  # an empty powercap: no RAPL zones
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    meter = energy.EnergyMeter()
    assert not meter.available and "no RAPL counters" in meter.reason
    meter.begin()
    assert math.isnan(meter.end())
    (tmp_path / "intel-rapl:0").mkdir()
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)  # zeus not installed
    assert "zeus is not installed" in energy.EnergyMeter().reason
    row = {"model": "m", "batch": 1, "prompts": "p", "contender": "ar", "tokens_per_s": 1.0}
    result = {
        "machine": dict(cpu="c", cores=1, threads=1, torch="t", python="p", date="d"),
        "bandwidth_gb_s": 1.0,
        "settings": dict(
            prompt_len=1, new_tokens=1, dtype="fp32", runs=1, warmup=0, energy=meter.reason
        ),
        "rows": [{k: row.get(k, float("nan")) for k, _, _ in report.COLUMNS}],
    }
    table = report.markdown(result)
    assert table.rstrip().endswith("| n/a |") and "Energy (J/tok): n/a" in table


def fake_result(rows, temperature=1.0):
    return {
        "settings": dict(
            methods=["ar", "spec", "mtad"],
            temperature=temperature,
            gamma=4,
            new_tokens=8,
            dtype="bf16",
        ),
        "rows": [dict(model="m", batch=b, prompts=g, contender=c, vs_ar=v) for b, g, c, v in rows],
    }


def test_speedups_per_batch_and_group_with_a_geometric_mean(tmp_path):
    result = fake_result(
        [
            (1, "qa", "ar", 1.0),
            (1, "qa", "spec", 2.0),
            (1, "qa", "mtad", 1.5),
            (1, "rag", "ar", 1.0),
            (1, "rag", "spec", 0.5),
            (1, "rag", "mtad", 1.5),
            (8, "qa", "ar", 1.0),
            (8, "qa", "spec", 0.8),
            (8, "qa", "transformers", float("nan")),
        ]
    )
    data = speedups(result)
    assert data[1]["qa"] == {"spec": 2.0, "mtad": 1.5}
    assert data[1]["all (geomean)"]["spec"] == pytest.approx(1.0)  # sqrt(2 * 0.5)
    assert data[1]["all (geomean)"]["mtad"] == pytest.approx(1.5)
    assert data[8] == {"qa": {"spec": 0.8}}  # one group: no mean; NaN rows are left out
    out = plot_speedup(result, tmp_path / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cli_validation_prompts_quality_and_plot(tmp_path):
    d = random_checkpoint("tiny", tmp_path / "tiny")
    draft = random_checkpoint("tiny", tmp_path / "tiny-draft", seed=1)
    root = corpus_dir(tmp_path / "corpus")
    out = tmp_path / "res" / "val.md"
    args = [
        sys.executable,
        "-m",
        "braid.cli",
        "bench",
        "--model",
        str(d),
        "--draft",
        str(draft),
        "--methods",
        "ar,spec",
        "--peer",
        "none",
        "--batch",
        "1",
        "--prompts",
        "val",
        "--val-data",
        str(root),
        "--prompt-count",
        "2",
        "--prompt-len",
        "8",
        "--new-tokens",
        "3",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--dtype",
        "fp32",
        "--threads",
        "1",
        "--temperature",
        "1",
        "--quality",
        "--quality-seeds",
        "4",
        "--quality-prompts",
        "1",
        "--out",
        str(out),
        "--plot",
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["prompts"] for r in data["rows"]] == ["validation", "validation"]
    assert out.with_suffix(".png").exists() and "ppl (target)" in out.read_text()
    bad = subprocess.run(args[:-3] + ["--plot"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--plot needs --out" in bad.stderr


def test_bench_defaults_to_the_bundled_target_and_runs_its_heads(capsys):
    """No --model or --config: the bundled target, with its shipped heads for the heads
    methods (tokens per pass above 1 shows the heads drafted and were kept)."""
    from braid.cli import main

    args = ["bench", "--methods", "ar,heads-tree", "--peer", "none", "--batch", "1"]
    args += ["--prompts", "val", "--prompt-count", "1", "--new-tokens", "24", "--runs", "1"]
    assert main([*args, "--warmup", "0", "--dtype", "fp32"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "bundled-target" in line]
    assert [r.split("|")[4].strip() for r in rows] == ["ar", "heads-tree"]
    assert float(rows[1].split("|")[8]) > 1.0
