"""Measure a target/draft pair with ``transformers``: agreement and relative pass cost.

* **Greedy agreement**: on validation sequences, teacher-forced, the fraction of positions where
  the draft's argmax next token equals the target's. It predicts the acceptance rate of greedy
  speculative decoding (one accepted token per agreeing position).
* **Pass-time ratio**: the median time of one forward pass for one new token on top of a
  ``context``-token KV cache, batch 1, draft over target. Target and draft runs are interleaved,
  so load from other processes affects both alike.

``python -m braid.training.compare --target DIR --draft DIR --write-cards`` prints a JSON report
and, with ``--write-cards``, stores the numbers in both models' ``braid_card.json`` and README.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from braid.training.corpus import load_corpus
from braid.training.tokenizer import encode_docs, load_tokenizer


def _load(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.eval()


@torch.inference_mode()
def agreement(
    target: torch.nn.Module,
    draft: torch.nn.Module,
    ids: np.ndarray,
    seq_len: int = 512,
    n_seqs: int = 64,
    batch: int = 8,
) -> dict:
    """Teacher-forced greedy agreement, top-1 accuracies and losses on ``n_seqs`` windows."""
    n = min(n_seqs, (len(ids) - 1) // seq_len)
    agree = correct_t = correct_d = count = 0
    loss_t = loss_d = 0.0
    for i in range(0, n, batch):
        rows = [ids[j * seq_len : (j + 1) * seq_len + 1] for j in range(i, min(n, i + batch))]
        w = torch.from_numpy(np.stack(rows).astype(np.int64))
        x, y = w[:, :-1], w[:, 1:]
        lt, ld = target(input_ids=x).logits.float(), draft(input_ids=x).logits.float()
        at, ad = lt.argmax(-1), ld.argmax(-1)
        agree += (at == ad).sum().item()
        correct_t += (at == y).sum().item()
        correct_d += (ad == y).sum().item()
        loss_t += F.cross_entropy(lt.flatten(0, 1), y.flatten(), reduction="sum").item()
        loss_d += F.cross_entropy(ld.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return {
        "positions": count,
        "greedy_agreement": agree / count,
        "target_top1": correct_t / count,
        "draft_top1": correct_d / count,
        "target_loss": loss_t / count,
        "draft_loss": loss_d / count,
    }


@torch.inference_mode()
def pass_times(
    models: dict[str, torch.nn.Module], context: int = 128, runs: int = 50, warmup: int = 10
) -> dict[str, float]:
    """Median seconds of one decode pass (1 new token, ``context`` cached), interleaved."""
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(0)
    state = {}
    for name, m in models.items():
        prompt = torch.randint(0, m.config.vocab_size, (1, context), generator=g)
        cache = DynamicCache(config=m.config)
        m(input_ids=prompt, past_key_values=cache, use_cache=True)
        state[name] = (m, cache, torch.tensor([[1]]), torch.tensor([[context]]))
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(warmup + runs):
        for name, (m, cache, tok, pos) in state.items():
            t0 = time.perf_counter()
            m(input_ids=tok, position_ids=pos, past_key_values=cache, use_cache=True)
            dt = time.perf_counter() - t0
            cache.crop(-1)  # roll back (transformers 5: a negative count) to `context` tokens
            if r >= warmup:
                times[name].append(dt)
    return {name: statistics.median(ts) for name, ts in times.items()}


def compare(
    target_dir: Path,
    draft_dir: Path,
    n_seqs: int = 64,
    seq_len: int = 512,
    context: int = 128,
    runs: int = 50,
    data: str | None = None,
) -> dict:
    tok = load_tokenizer(target_dir)
    if (Path(draft_dir) / "tokenizer.json").read_bytes() != (
        Path(target_dir) / "tokenizer.json"
    ).read_bytes():
        raise ValueError("target and draft tokenizers differ")
    val_ids = encode_docs(tok, load_corpus(data).val)
    report: dict = {"torch_threads": torch.get_num_threads()}
    # Agreement in fp32 (bf16 weights upcast): bf16 logit ties would blur the argmax.
    t32, d32 = _load(target_dir, torch.float32), _load(draft_dir, torch.float32)
    report.update(agreement(t32, d32, val_ids, seq_len, n_seqs))
    report["target_ppl"] = math.exp(report["target_loss"])
    report["draft_ppl"] = math.exp(report["draft_loss"])
    for dtype in (torch.bfloat16, torch.float32):
        name = str(dtype).replace("torch.", "")
        t, d = _load(target_dir, dtype), _load(draft_dir, dtype)
        ts = pass_times({"target": t, "draft": d}, context, runs)
        report[f"pass_ms_target_{name}"] = ts["target"] * 1e3
        report[f"pass_ms_draft_{name}"] = ts["draft"] * 1e3
        report[f"pass_ratio_{name}"] = ts["draft"] / ts["target"]
    return report


def write_cards(target_dir: Path, draft_dir: Path, report: dict) -> None:
    """Store the pair's measurements in both cards (JSON and README)."""
    from braid.training.lm_card import write_card

    r = report
    agree = f"{r['greedy_agreement']:.4f} over {r['positions']:,} positions"
    ratio = {
        dt: f"{r['pass_ratio_' + dt]:.3f} ({r['pass_ms_draft_' + dt]:.2f} ms / "
        f"{r['pass_ms_target_' + dt]:.2f} ms)"
        for dt in ("bfloat16", "float32")
    }
    shared = {
        "draft/target greedy agreement (teacher-forced, validation)": agree,
        "draft/target pass-time ratio (bf16, batch 1, 1 token after 128)": ratio["bfloat16"],
        "draft/target pass-time ratio (fp32)": ratio["float32"],
    }
    for role, d in (("target", target_dir), ("draft", draft_dir)):
        card = json.loads((Path(d) / "braid_card.json").read_text())
        m = {"top-1 next-token accuracy (validation, fp32)": f"{report[role + '_top1']:.4f}"}
        m.update(shared)
        card["measurements"] = m
        card["pair"] = {k: report[k] for k in report}
        write_card(Path(d), card)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, type=Path)
    p.add_argument("--draft", required=True, type=Path)
    p.add_argument("--data", help="text file or directory (default: stdlib corpus validation)")
    p.add_argument("--seqs", type=int, default=64, help="validation windows for agreement")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--context", type=int, default=128, help="cached tokens for the pass timing")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--write-cards", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    report = compare(a.target, a.draft, a.seqs, a.seq_len, a.context, a.runs, a.data)
    print(json.dumps(report, indent=2))
    if a.write_cards:
        write_cards(a.target, a.draft, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
