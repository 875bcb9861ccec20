"""A few optimizer steps of a tiny language model through braid's training runtime.

Run alone it trains in one process; under ``torchrun --nproc-per-node N`` every process joins the
process group from the launcher's environment. Rank 0 writes the logged losses and the final
weights as JSON, so a test can compare the two launches.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from braid.training.runtime import Schedule, Trainer, adamw, seed_all, setup_runtime

VOCAB, CONTEXT, BATCH = 17, 6, 3


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.out = torch.nn.Linear(8, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids).cumsum(1) / torch.arange(1, ids.shape[1] + 1)[:, None]
        return self.out(self.norm(h))


def micro_batch(step: int, shard: int) -> torch.Tensor:
    """The rows of one micro-batch: a pure function of (step, shard), as the runtime asks."""
    g = torch.Generator().manual_seed(1000 * step + shard)
    return torch.randint(0, VOCAB, (BATCH, CONTEXT + 1), generator=g)


def micro_loss(model: torch.nn.Module, step: int, shard: int) -> tuple[torch.Tensor, dict]:
    w = micro_batch(step, shard)
    logits = model(w[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten())
    return loss, {"tokens": w.numel() - w.shape[0], "first": float(w[0, 0])}


def run(steps: int, grad_accum: int) -> dict:
    rt = setup_runtime("cpu", "fp32", threads=1)
    seed_all(0)
    model = TinyLM()
    opt = adamw(model, lr=0.05, weight_decay=0.1)
    trainer = Trainer(
        rt, model, opt, Schedule(steps, warmup=1), grad_accum=grad_accum, grad_clip=0.5, quiet=True
    )
    trainer.fit(micro_loss, steps)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    rt.barrier()
    return {
        "world": rt.world,
        "rank": rt.rank,
        "history": trainer.progress["history"],
        "tokens_seen": trainer.progress["tokens_seen"],
        "weights": weights,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    result = run(args.steps, args.grad_accum)
    if result["rank"] == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
