"""The training runtime: two DDP processes (gloo, CPU) train exactly as one process with twice the
accumulation; schedule, checkpoint resume and the launcher environment."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ddp_worker import TinyLM, micro_batch, micro_loss, run

from braid.training.runtime import (
    Runtime,
    Schedule,
    Trainer,
    adamw,
    load_checkpoint,
    setup_runtime,
)

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()  # the worker sets 1; later tests keep their threads
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path: Path, nproc: int, grad_accum: int) -> dict:
    out = tmp_path / f"ddp-{nproc}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    cmd += ["--master-addr=127.0.0.1", f"--master-port={_free_port()}", str(WORKER)]
    cmd += ["--grad-accum", str(grad_accum), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    """Per step: the mean loss and metrics over the whole global batch; at the end: the weights.
    One process with 2 micro-batches per step is the reference (no DDP, no all-reduce)."""
    two = _torchrun(tmp_path, 2, grad_accum=1)
    one = run(steps=4, grad_accum=2)
    half = run(steps=4, grad_accum=1)  # rank 0's data alone: must differ, or nothing is tested
    assert (two["world"], one["world"]) == (2, 1)
    assert len(two["history"]) == len(one["history"]) == 4
    for a, b in zip(two["history"], one["history"], strict=True):
        assert a["step"] == b["step"]
        for key in ("loss", "first", "grad_norm", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (key, a, b)
    assert two["tokens_seen"] == one["tokens_seen"] == 4 * 2 * 3 * 6
    torch.testing.assert_close(
        torch.tensor(two["weights"]), torch.tensor(one["weights"]), rtol=1e-5, atol=1e-6
    )
    assert abs(half["history"][0]["loss"] - one["history"][0]["loss"]) > 1e-3


def test_accumulated_step_is_one_adamw_step_on_the_mean_loss():
    """Against plain torch: the mean of the 3 micro-batch losses, one backward, one AdamW step
    (no warmup: the schedule's first lr is the peak)."""
    torch.manual_seed(0)
    model, ref = TinyLM(), TinyLM()
    ref.load_state_dict(model.state_dict())
    trainer = Trainer(
        setup_runtime("cpu", "fp32"), model, adamw(model, lr=0.1), Schedule(10), grad_accum=3
    )
    rec = trainer.optimizer_step(micro_loss)
    windows = [micro_batch(0, shard) for shard in range(3)]
    loss = sum(F.cross_entropy(ref(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten()) for w in windows)
    loss = loss / 3
    assert rec["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert rec["first"] == pytest.approx(sum(float(w[0, 0]) for w in windows) / 3)
    loss.backward()
    torch.optim.AdamW(ref.parameters(), lr=0.1, betas=(0.9, 0.95), weight_decay=0.0).step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
    def fresh() -> Trainer:
        torch.manual_seed(0)
        model = TinyLM()
        rt = setup_runtime("cpu", "fp32")
        opt = adamw(model, 0.05, 0.1)
        return Trainer(rt, model, opt, Schedule(6, 2), grad_clip=1.0, quiet=True)

    full = fresh()
    full.fit(micro_loss, 6)
    part = fresh()
    part.fit(micro_loss, 3)
    part.save(tmp_path / "ckpt", {"what": "tiny"})
    resumed = fresh()
    state = load_checkpoint(tmp_path / "ckpt")
    assert state["config"] == {"what": "tiny"} and state["step"] == 3
    resumed.restore(state)
    resumed.fit(micro_loss, 6)
    losses = [h["loss"] for h in resumed.progress["history"]]
    assert losses == pytest.approx([h["loss"] for h in full.progress["history"]], abs=1e-7)
    for a, b in zip(resumed.model.parameters(), full.model.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


def test_schedule_warms_up_then_decays_by_a_cosine():
    s = Schedule(steps=110, warmup=10, min_lr_ratio=0.2)
    assert [s.factor(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    # half-way through the decay: the cosine is at 0, the factor half-way to the floor
    assert s.factor(60) == pytest.approx(0.2 + 0.8 * 0.5)
    assert s.factor(35) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert s.factor(110) == pytest.approx(0.2) and s.factor(500) == pytest.approx(0.2)


def test_launcher_environment_and_bad_settings(monkeypatch):
    assert setup_runtime("cpu", "fp32").world == 1
    with pytest.raises(ValueError, match="--precision fp16"):
        setup_runtime("cpu", "fp16")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="launcher environment"):
        setup_runtime("cpu", "fp32")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="--grad-accum 0"):
        Trainer(Runtime(torch.device("cpu")), model, adamw(model, 0.1), Schedule(1), grad_accum=0)
