"""One training runtime for ``braid train-lm``, ``train-heads`` and ``train-multiverse``.

A command brings its data and its loss as ``micro_loss(model, step, shard)``; the runtime does
the rest: device and autocast, seeding, AdamW with warmup + cosine decay, the optimizer step with
gradient accumulation and clipping, atomic checkpoints and exact resume, a progress bar, a JSONL
loss log, a clean stop on SIGINT/SIGTERM, and the distributed path.

Distributed: ``torchrun --nproc-per-node N`` and ``accelerate launch`` (which starts the same
processes through torchrun) set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; the runtime then
joins the process group (NCCL on CUDA, Gloo otherwise), wraps the model in
DistributedDataParallel and writes files only on rank 0. One optimizer step consumes
``world * grad_accum`` micro-batches, micro-batch ``micro`` of rank ``rank`` being shard
``rank * grad_accum + micro``. A command draws each micro-batch as a pure function of
``(step, shard)``, so N processes train on exactly the global batch of one process accumulating
N times as many micro-batches, and their logged losses (means over all shards) agree with it to
fp32 rounding.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# micro_loss(model, step, shard) -> (loss to minimise, metrics to average and log); a metric
# named "tokens" is summed into tokens_seen instead of logged
MicroLoss = Callable[[torch.nn.Module, int, int], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to run forward passes through: DDP when distributed, else `model`."""
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def mean(self, values: list[float]) -> list[float]:
        """Each value averaged over the ranks (one all-reduce)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return (t / self.world).tolist()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def logger(self, quiet: bool = False) -> Callable[..., None]:
        """Lines on stderr from rank 0 unless quiet; tqdm.write keeps a running bar intact."""
        if quiet or not self.main:
            return lambda *a: None
        from tqdm.auto import tqdm

        return lambda *a: tqdm.write(" ".join(map(str, a)), file=sys.stderr)


def setup_runtime(device: str = "auto", precision: str = "auto", threads: int = 0) -> Runtime:
    """Pick the device (cuda > mps > cpu) and autocast dtype; join the process group when the
    launcher's WORLD_SIZE says there are several processes."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"--precision {precision}: expected auto, bf16 or fp32")
    env = {k: os.environ.get(k, d) for k, d in (("WORLD_SIZE", "1"), ("RANK", "0"))}
    env["LOCAL_RANK"] = os.environ.get("LOCAL_RANK", "0")
    try:
        world, rank, local_rank = (int(env[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    except ValueError:
        raise ValueError(f"launcher environment {env}: expected integers") from None
    if device != "auto":
        dev = torch.device(device)
    elif torch.cuda.is_available():
        dev = torch.device("cuda", local_rank)
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        dev = torch.device("mps")
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if threads > 0:
        torch.set_num_threads(threads)
    dtype = None
    if precision == "bf16":
        dtype = torch.bfloat16
    elif precision == "auto" and native_bf16(dev):
        dtype = torch.bfloat16
    return Runtime(dev, dtype, rank, world)


def native_bf16(device: torch.device) -> bool:
    """bf16 matmuls in hardware (CUDA, or avx512_bf16 / AMX on CPU: about 2x fp32 speed)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def seed_all(seed: int) -> None:
    """The same seed on every rank, so every rank builds the same initial weights."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@dataclass(frozen=True)
class Schedule:
    """Linear warmup to each group's peak lr, then cosine decay to `min_lr_ratio` x peak."""

    steps: int
    warmup: int = 0
    min_lr_ratio: float = 0.1

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        frac = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        cosine = 0.5 * (1 + math.cos(math.pi * frac))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine


def adamw(
    params: torch.nn.Module | list[dict], lr: float, weight_decay: float = 0.0
) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.95). For a module, matrices decay and vectors (norms, biases) do not;
    a list of groups is taken as given (each may set its own lr)."""
    if isinstance(params, torch.nn.Module):
        ps = [p for p in params.parameters() if p.requires_grad]
        params = [
            {"params": [p for p in ps if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0},
        ]
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters: tied input/output embeddings count once."""
    return sum(p.numel() for p in model.parameters())


def load_checkpoint(directory: Path) -> dict:
    """The state a `Trainer.save` wrote to ``directory/state.pt``."""
    path = Path(directory) / "state.pt"
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def resumed_config(cls: Callable[..., Any], state: dict, overrides: dict, allowed: Any) -> Any:
    """The checkpoint's config (a run's identity comes from it) with the `overrides` applied;
    only keys in `allowed` may change."""
    saved = cls(**state["config"])
    for k, v in overrides.items():
        if k not in allowed:
            raise ValueError(f"--resume: {k} cannot change, it comes from the checkpoint")
        setattr(saved, k, v)
    return saved


def machine() -> str:
    """CPU or GPU name, logical CPUs and torch version, for model cards."""
    name = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    return f"{name or 'unknown CPU'}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"


class Trainer:
    """The optimizer-step loop over one model: state is `step` and `progress` (tokens seen,
    seconds, per-step history), all saved in checkpoints."""

    def __init__(
        self,
        rt: Runtime,
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        schedule: Schedule,
        *,
        grad_accum: int = 1,
        grad_clip: float = 0.0,
        out: Path | None = None,
        log_every: int = 0,
        quiet: bool = False,
    ) -> None:
        if grad_accum < 1:
            raise ValueError(f"--grad-accum {grad_accum}: expected >= 1")
        self.rt, self.model, self.opt, self.schedule = rt, model, opt, schedule
        self.train_model = rt.wrap(model)
        self.peaks = [g["lr"] for g in opt.param_groups]  # before a resume overwrites lr
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        self.out, self.log_every, self.quiet = out, log_every, quiet
        self.step = 0
        self.progress: dict[str, Any] = {"tokens_seen": 0, "train_seconds": 0.0, "history": []}

    @classmethod
    def from_config(
        cls, rt: Runtime, model: torch.nn.Module, cfg: Any, out: Path | None, quiet: bool
    ) -> Trainer:
        """AdamW and warmup + cosine from a command's config (lr, weight_decay, steps, warmup,
        min_lr_ratio, grad_accum, grad_clip, log_every): how train-lm and train-multiverse
        build theirs."""
        return cls(
            rt,
            model,
            adamw(model, cfg.lr, cfg.weight_decay),
            Schedule(cfg.steps, cfg.warmup, cfg.min_lr_ratio),
            grad_accum=cfg.grad_accum,
            grad_clip=cfg.grad_clip,
            out=out,
            log_every=cfg.log_every,
            quiet=quiet,
        )

    # ------------------------------------------------------------ checkpoints

    def save(self, directory: Path, config: dict) -> None:
        """Write ``directory/state.pt`` atomically (a crash mid-write keeps the previous one)."""
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "progress": self.progress,
            "config": config,
            "rng": rng,
        }
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(state, directory / "state.pt.tmp")
        (directory / "state.pt.tmp").replace(directory / "state.pt")

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint: weights, optimizer, step, progress and RNG states."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.progress = state["step"], state["progress"]
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # ------------------------------------------------------------ one step

    def optimizer_step(self, micro_loss: MicroLoss, stop: bool = False) -> dict[str, Any]:
        """One optimizer step over `world * grad_accum` micro-batches; returns its record
        (loss and metrics averaged over all shards) and whether any rank asked to stop."""
        rt, ga = self.rt, self.grad_accum
        t0 = time.perf_counter()
        factor = self.schedule.factor(self.step)
        for g, peak in zip(self.opt.param_groups, self.peaks):
            g["lr"] = peak * factor
        loss_sum, sums = 0.0, {}
        for micro in range(ga):
            last = micro == ga - 1
            sync = contextlib.nullcontext() if last or rt.world == 1 else self.train_model.no_sync()
            with sync:
                with rt.autocast():
                    loss, metrics = micro_loss(self.train_model, self.step, rt.rank * ga + micro)
                (loss / ga).backward()
            loss_sum += loss.item() / ga
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) / ga
        clip = self.grad_clip if self.grad_clip > 0 else math.inf
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip).item()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        keys = sorted(sums)
        means = rt.mean([loss_sum, *(sums[k] for k in keys), float(stop)])
        self.step += 1
        record = {"step": self.step, "loss": means[0], "lr": self.peaks[0] * factor}
        record["grad_norm"] = gnorm
        record.update(zip(keys, means[1:-1]))
        tokens = record.pop("tokens", 0.0) * rt.world * ga
        self.progress["tokens_seen"] += round(tokens)
        self.progress["train_seconds"] += time.perf_counter() - t0
        if rt.main:
            self.progress["history"].append(record)
        return {**record, "tokens": tokens, "stop": means[-1] > 0}

    # ------------------------------------------------------------ the loop

    def fit(
        self,
        micro_loss: MicroLoss,
        until: int,
        *,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        checkpoint: tuple[Path, dict] | None = None,
        save_every: int = 0,
        stop_on_signal: bool = True,
    ) -> None:
        """Steps until `until` (or a SIGINT/SIGTERM: the current step finishes on every rank);
        a checkpoint every `save_every` steps before the last; `on_step(record)` after each."""
        from tqdm.auto import tqdm

        rt = self.rt
        asked = {"stop": False}
        old: dict[int, Any] = {}
        if stop_on_signal:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError):  # not the main thread
                    old[sig] = signal.signal(sig, lambda *a: asked.update(stop=True))
        bar = tqdm(
            total=self.schedule.steps,
            initial=self.step,
            disable=self.quiet or not rt.main,
            dynamic_ncols=True,
            unit="step",
            file=sys.stderr,
        )
        t_window, tok_window = time.perf_counter(), 0.0
        self.model.train()
        try:
            while self.step < until:
                rec = self.optimizer_step(micro_loss, asked["stop"])
                tok_window += rec["tokens"]
                tok_s = tok_window / max(1e-9, time.perf_counter() - t_window)
                shown = {k: f"{v:.3f}" for k, v in rec.items() if k not in _NOT_SHOWN}
                if tok_window:
                    shown["tok_s"] = f"{tok_s:,.0f}"
                bar.set_postfix(shown, refresh=False)
                bar.update(1)
                if rt.main and self.out and self.log_every and self.step % self.log_every == 0:
                    self._log_line(rec, tok_s)
                    t_window, tok_window = time.perf_counter(), 0.0
                if on_step:
                    on_step(rec)
                if checkpoint and save_every and self.step % save_every == 0 and self.step < until:
                    if rt.main:
                        self.save(*checkpoint)
                if rec["stop"]:
                    break
        finally:
            bar.close()
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _log_line(self, rec: dict[str, Any], tok_s: float) -> None:
        line = {k: round(v, 4) for k, v in rec.items() if k not in ("step", "lr", "tokens", "stop")}
        line = {"step": rec["step"], **line, "lr": rec["lr"]}
        if rec["tokens"]:
            line["tok_s"] = round(tok_s)
        line["elapsed_s"] = round(self.progress["train_seconds"], 1)
        with open(self.out / "train_log.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


_NOT_SHOWN = ("step", "lr", "grad_norm", "tokens", "stop")
