"""braid train-lm: corpus split, tokenizer, a tiny training run, export, and exact resume."""

from __future__ import annotations

import json
import math
import sysconfig
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from braid.training import corpus as corpus_mod
from braid.training.train_lm import TrainConfig, lr_at, sample_batch, train

# A few stdlib modules as a ~300 kB user corpus: small enough to tokenize in well under a second.
_SOURCES = [
    "argparse.py",
    "dataclasses.py",
    "functools.py",
    "inspect.py",
    "typing.py",
    "pathlib.py",
    "json/decoder.py",
    "json/encoder.py",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_lm")
    data = root / "data"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for rel in _SOURCES:
        dst = data / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text((stdlib / rel).read_text(encoding="utf-8"), encoding="utf-8")
    return root


@pytest.fixture(autouse=True)
def _cache(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAID_CACHE", str(workdir / "cache"))


def _tiny(workdir: Path, out: str, **kw: object) -> TrainConfig:
    cfg = TrainConfig(
        out=str(workdir / out),
        data=str(workdir / "data"),
        vocab_size=384,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        context=32,
        steps=40,
        batch_size=8,
        lr=3e-3,
        warmup=4,
        seed=1,
        threads=2,
        eval_tokens=2048,
        save_every=0,
        log_every=0,
    )
    return replace(cfg, **kw)


def test_split_is_deterministic_and_disjoint(workdir: Path) -> None:
    assert corpus_mod.is_validation("a/b.py") == corpus_mod.is_validation("a/b.py")
    keys = [f"pkg/mod{i}.py" for i in range(5000)]
    frac = sum(map(corpus_mod.is_validation, keys)) / len(keys)
    assert 0.01 < frac < 0.03
    files = corpus_mod.stdlib_files()
    rels = [r for r, _ in files]
    assert rels == sorted(rels) and not any("site-packages" in r for r in rels)
    c = corpus_mod.load_corpus(workdir / "data")
    assert c.val, "a validation split always exists (tail fallback for few files)"
    assert not set(c.train) & set(c.val)


def test_stdlib_corpus_is_large_enough(workdir: Path) -> None:
    c = corpus_mod.build_stdlib_corpus(cache_dir=workdir / "stdlib")
    assert c.train_bytes >= 10_000_000 and c.val_bytes > 100_000
    assert c.meta["license"].startswith("PSF")
    again = corpus_mod.build_stdlib_corpus(cache_dir=workdir / "stdlib")  # from the cache
    assert again.train_bytes == c.train_bytes and len(again.train) == len(c.train)


def test_schedule_and_batches_are_pure() -> None:
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    import numpy as np

    ids = np.arange(1000, dtype=np.uint16)
    a, b = sample_batch(ids, 4, 16, 0, 7, 0), sample_batch(ids, 4, 16, 0, 7, 0)
    assert torch.equal(a, b) and a.shape == (4, 17)
    assert not torch.equal(a, sample_batch(ids, 4, 16, 0, 8, 0))


def test_tiny_run_exports_a_loadable_model(workdir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = _tiny(workdir, "tiny", role="draft")
    card = train(cfg, quiet=True)
    out = Path(cfg.out)
    assert card["val_loss"] < card["initial_val_loss"] - 0.5, card
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
    hist = [h["loss"] for h in state["progress"]["history"]]
    assert sum(hist[-5:]) / 5 < sum(hist[:5]) / 5
    assert card["val_ppl"] == pytest.approx(math.exp(card["val_loss"]), rel=1e-3)

    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "README.md",
        "braid_card.json",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "braid_card.json").read_text())
    assert saved["role"] == "draft" and saved["parameters"] == card["parameters"]
    assert {"val_loss", "val_ppl", "train_seconds", "tokens_seen", "corpus"} <= set(saved)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert "validation perplexity" in (out / "README.md").read_text()

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == model.config.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    ids = tok("def f(x):\n    return", return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == "def f(x):\n    return"
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()


def test_resume_continues_exactly(workdir: Path) -> None:
    # The tokenizer of the first run is reused so that all three runs see the same tokens.
    tok = str(workdir / "tiny" / "tokenizer")
    if not Path(tok).exists():
        train(_tiny(workdir, "tiny"), quiet=True)
    full = train(_tiny(workdir, "full", steps=8, tokenizer=tok), quiet=True)
    full_hist = torch.load(workdir / "full" / "checkpoint" / "state.pt", weights_only=False)[
        "progress"
    ]["history"]

    part_cfg = _tiny(workdir, "part", steps=8, tokenizer=tok, stop_after=5)
    train(part_cfg, quiet=True)
    state = torch.load(workdir / "part" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 5 and len(state["progress"]["history"]) == 5

    # Resume from the checkpoint: the settings come from it, except the stopping point.
    resumed = train(
        replace(part_cfg, lr=123.0), resume=True, overrides={"stop_after": 0}, quiet=True
    )
    hist = torch.load(workdir / "part" / "checkpoint" / "state.pt", weights_only=False)["progress"][
        "history"
    ]
    assert [h["step"] for h in hist] == list(range(1, 9))
    for a, b in zip(hist, full_hist, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6), (a, b)
    assert resumed["steps"] == full["steps"] == 8
    assert resumed["tokens_seen"] == full["tokens_seen"]
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], abs=1e-5)


def test_cli_parser_and_config_file(workdir: Path) -> None:
    import argparse

    from braid.training.train_lm import add_parser, config_from_args, run

    parser = argparse.ArgumentParser(prog="braid")
    add_parser(parser.add_subparsers(dest="command"))
    cfg_file = workdir / "cfg.json"
    cfg_file.write_text(json.dumps({"hidden_size": 64, "steps": 3, "lr": 0.01}))
    args = parser.parse_args(
        ["train-lm", "--config", str(cfg_file), "--steps", "5", "--layers", "3"]
    )
    assert args.func is run
    cfg = config_from_args(args)
    assert (cfg.hidden_size, cfg.steps, cfg.num_layers, cfg.lr) == (64, 5, 3, 0.01)
    cfg_file.write_text(json.dumps({"hidden_sise": 64}))
    assert run(parser.parse_args(["train-lm", "--config", str(cfg_file)])) == 2


def test_distill_loss_is_the_kl_to_the_teacher_plus_weighted_ce() -> None:
    """Against the definition written out with explicit sums over the vocabulary."""
    from braid.training.train_lm import distill_loss

    torch.manual_seed(0)
    vocab, window = 7, torch.randint(0, 7, (2, 5))

    class Fixed(torch.nn.Module):  # logits as a fixed function of the ids
        def __init__(self, seed: int):
            super().__init__()
            self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))

        def forward(self, input_ids):
            return type("Out", (), {"logits": self.table[input_ids]})

    student, teacher = Fixed(1), Fixed(2)
    kl = ce = 0.0
    rows = 0
    for b in range(2):
        for t in range(4):
            p = torch.softmax(teacher.table[window[b, t]].double(), -1)
            q = torch.softmax(student.table[window[b, t]].double(), -1)
            kl += float(sum(p[v] * (p[v].log() - q[v].log()) for v in range(vocab)))
            ce += float(-q[window[b, t + 1]].log())
            rows += 1
    kl, ce = kl / rows, ce / rows
    assert float(distill_loss(student, teacher, window, 1.0)) == pytest.approx(kl, rel=1e-5)
    mixed = float(distill_loss(student, teacher, window, 0.25))
    assert mixed == pytest.approx(0.75 * ce + 0.25 * kl, rel=1e-5)


def test_distilled_run_starts_from_init_and_moves_toward_the_teacher(workdir: Path) -> None:
    """--init copies a model (its initial loss is the source's); --teacher lowers the KL."""
    from transformers import AutoModelForCausalLM

    from braid.training.train_lm import distill_loss

    tok = str(workdir / "tiny" / "tokenizer")
    if not Path(tok).exists():
        train(_tiny(workdir, "tiny"), quiet=True)
    teacher_dir = workdir / "kd_teacher"
    teacher_card = train(_tiny(workdir, "kd_teacher", steps=30, tokenizer=tok), quiet=True)
    start = train(_tiny(workdir, "kd_start", steps=2, tokenizer=tok, seed=5), quiet=True)
    cfg = _tiny(
        workdir,
        "kd",
        steps=30,
        tokenizer=tok,
        init=str(workdir / "kd_start"),
        teacher=str(teacher_dir),
    )
    card = train(cfg, quiet=True)
    train(replace(cfg, out=str(workdir / "kd_ce"), teacher=None), quiet=True)  # data alone
    # exported bf16 weights: the copied start's loss within bf16 rounding
    assert card["initial_val_loss"] == pytest.approx(start["val_loss"], abs=0.02)
    assert teacher_card["val_loss"] < start["val_loss"]

    import numpy as np

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    ids = np.load(next((workdir / "cache" / "tokens").glob("*.npz")))["val"]
    w = torch.from_numpy(ids[: 4 * 33].astype(np.int64)).view(4, 33)
    with torch.no_grad():
        kls = [
            float(
                distill_loss(
                    AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32), teacher, w, 1.0
                )
            )
            for d in (workdir / "kd_start", workdir / "kd", workdir / "kd_ce")
        ]
    assert kls[1] < 0.5 * kls[0] and kls[1] < 0.5 * kls[2], kls

    with pytest.raises(FileNotFoundError, match="not a model directory"):
        train(_tiny(workdir, "kd_bad", tokenizer=tok, teacher=str(workdir / "nope")), quiet=True)


def test_distillation_settings_are_checked_before_any_work(workdir: Path) -> None:
    tok = str(workdir / "tiny" / "tokenizer")
    if not Path(tok).exists():
        train(_tiny(workdir, "tiny"), quiet=True)
    with pytest.raises(ValueError, match="kd-weight"):
        train(_tiny(workdir, "kd_w", tokenizer=tok, kd_weight=1.5), quiet=True)
    # a model of another shape: the message names the mismatching weight
    other = train(_tiny(workdir, "kd_other", steps=1, tokenizer=tok, hidden_size=48), quiet=True)
    assert other["architecture"]["hidden_size"] == 48
    with pytest.raises(ValueError, match=r"--init .*do not fit.*size mismatch"):
        train(_tiny(workdir, "kd_bad_init", tokenizer=tok, init=str(workdir / "kd_other")))
