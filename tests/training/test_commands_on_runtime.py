"""The commands on the runtime under torchrun (2 gloo processes): `braid train-multiverse` trains
as one process with twice the accumulation and resumes exactly from its checkpoint;
`braid train-heads` trains as one process with twice the batch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from braid.multiverse.train import MultiverseTrainConfig, main, train

KNOBS = json.dumps({"min_parts": 2, "max_parts": 2, "nest_rate": 0.0, "max_operand": 9})


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()  # --threads 1 runs in this process; later tests keep theirs
    yield
    torch.set_num_threads(threads)


def _flags(model: Path, out: Path, **kw: object) -> list[str]:
    settings = {"model": model, "out": out, "tasks": 12, "knobs": KNOBS, "steps": 3}
    settings.update(batch_size=2, lr=3e-3, warmup=5, device="cpu", precision="fp32")
    settings.update(threads=1, log_every=0, **kw)
    return [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()] + ["--quiet"]


def _history(out: Path) -> list[dict]:
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
    return state["progress"]["history"]


def test_two_processes_train_as_one_with_twice_the_accumulation(llama_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    cmd += ["--master-addr=127.0.0.1", f"--master-port={port}", "-m", "braid.multiverse.train"]
    done = subprocess.run(
        cmd + _flags(llama_dir, tmp_path / "ddp"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(_flags(llama_dir, tmp_path / "one", grad_accum=2)) == 0
    assert main(_flags(llama_dir, tmp_path / "half")) == 0  # rank 0's rows alone
    ddp, one, half = (_history(tmp_path / d) for d in ("ddp", "one", "half"))
    assert len(ddp) == len(one) == 3
    for a, b in zip(ddp, one, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
        assert a["mv_fraction"] == pytest.approx(b["mv_fraction"])
    assert abs(half[0]["loss"] - one[0]["loss"]) > 1e-3
    cards = [json.loads((tmp_path / d / "braid_card.json").read_text()) for d in ("ddp", "one")]
    assert cards[0]["world_size"] == 2 and cards[1]["world_size"] == 1
    assert cards[0]["tokens_seen"] == cards[1]["tokens_seen"]


def test_resume_continues_exactly(llama_dir, tmp_path):
    """Inside the warmup the schedule does not depend on --steps (nor, without a curriculum, the
    batches): 2 steps then a resume to 4 are the 4 steps of one run."""
    cfg = dict(model=str(llama_dir), tasks=12, knobs=KNOBS, batch_size=2, lr=3e-3, warmup=8)
    cfg.update(curriculum=0.0)
    cfg.update(device="cpu", precision="fp32", log_every=0)
    train(MultiverseTrainConfig(out=str(tmp_path / "full"), steps=4, **cfg), quiet=True)
    train(MultiverseTrainConfig(out=str(tmp_path / "part"), steps=2, **cfg), quiet=True)
    assert main(["--out", str(tmp_path / "part"), "--resume", "--steps", "4", "--quiet"]) == 0
    full, part = _history(tmp_path / "full"), _history(tmp_path / "part")
    assert [h["step"] for h in part] == [1, 2, 3, 4]
    assert [h["loss"] for h in part] == pytest.approx([h["loss"] for h in full], abs=1e-6)
    card = json.loads((tmp_path / "part" / "braid_card.json").read_text())
    assert card["config"]["steps"] == 4
    assert main(["--out", str(tmp_path / "part"), "--resume", "--lr", "1", "--quiet"]) == 2


def test_train_heads_on_two_processes_equals_one_with_the_global_batch(
    llama_dir, tmp_path, monkeypatch
):
    """Each rank takes its slice of the step's rows, drawn from one seeded stream, so 2 x 8 rows
    are the 16 rows of one process (the balance term, not linear in the batch, is off). The
    heads' logits are bf16 on this CPU; the saved config rounds to 4 decimals."""
    from helpers import CORPUS

    monkeypatch.setenv("BRAID_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS * 12)

    def flags(out: str, batch: int) -> list[str]:
        # settings in a --config file: torchrun's own parser would take --n for its options
        settings = {"model": str(llama_dir), "data": str(corpus), "n": 2, "rank": 2, "steps": 3}
        settings.update(batch_size=batch, lr=1e-2, balance=0.0, train_tokens=256, val_tokens=64)
        settings.update(context=32, targets="data", device="cpu", threads=1)
        config = tmp_path / f"{out}.json"
        config.write_text(json.dumps(settings))
        return ["train-heads", "--config", str(config), "--out", str(tmp_path / out), "--quiet"]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    cmd += ["--master-addr=127.0.0.1", f"--master-port={port}", "-m", "braid.cli"]
    done = subprocess.run(cmd + flags("ddp", 8), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    from braid.cli import main as braid_main

    assert braid_main(flags("one", 16)) == 0
    assert braid_main(flags("half", 8)) == 0
    ddp, one, half = (
        json.loads((tmp_path / d / "heads.json").read_text()) for d in ("ddp", "one", "half")
    )
    for key in ("initial_val_loss", "last_train_nll"):
        assert ddp["training"][key] == pytest.approx(one["training"][key], abs=2e-4), key
    assert ddp["val_loss"] == pytest.approx(one["val_loss"], abs=2e-4)
    assert abs(half["training"]["last_train_nll"] - one["training"]["last_train_nll"]) > 1e-2
