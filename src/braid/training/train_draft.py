"""``braid train-draft``: a small draft on its target's embeddings, trained on the target's own
answers (``braid distill-data``).

The draft is the target's architecture cut to ``--layers`` layers: same hidden size, so it
**borrows the target's token embeddings** (stored once, in the target; EAGLE, FR-Spec and
LayerSkip drafts do the same), its layers and final norm start as copies of the target's
(``--init-layers first`` or ``last``), and its output layer is a **shortlist**: the embedding
rows of the ``--shortlist`` ids most frequent in the training answers (FR-Spec). Only the
layers and the norm train; the embeddings stay the target's.

Loss, on answer tokens only: cross entropy to the target's top-k distribution kept in the data
(forward KL up to a constant, restricted to the top-k ids in the shortlist) plus
``--hard-weight`` x cross entropy on the token the target wrote. Validation: every
``--val-every``-th answer, never trained on. Reported: teacher-forced greedy agreement (draft
argmax = target argmax) and the overlap sum_top-k min(p, q), a lower bound on the probability
that a T = 1 draft token is accepted.

Output: ``config.json`` (with the ``braid_shared_embeddings`` record: the target's hidden size,
vocabulary size and tokenizer fingerprint, which the loader checks), ``model.safetensors`` (bf16
layers and norm, no embeddings) and ``shortlist.json``. ``export_hf`` writes the same layers
with the target's embeddings and a full tied head as a plain Hugging Face directory.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from braid.methods.draft import SHARED_KEY, vocabulary_fingerprint
from braid.training import flags
from braid.training.distill import default_out

SHORTLIST_FILE = "shortlist.json"


@dataclass
class DraftConfig:
    out: str = "runs/smollm2-draft"
    data: str = ""  # default: braid distill-data's default file
    target: str | None = None  # HF directory of the target; None = the default model (bf16)
    layers: int = 2
    init_layers: str = "first"  # first | last: which target layers the draft starts from
    shortlist: int = 8192  # 0 = the full vocabulary
    epochs: float = 2.0
    batch_tokens: int = 4096
    lr: float = 3e-4
    warmup: int = 30
    hard_weight: float = 0.2
    val_every: int = 25
    seed: int = 0
    threads: int = 0
    time_limit: float = 0.0  # minutes; 0 = none: stop (and export) when reached


_HELP = {
    "data": "distill-data JSONL files, comma-separated (default: its default file)",
    "target": "the target's Hugging Face directory (default: the default model, bf16)",
    "layers": "draft layers",
    "init_layers": "start from the target's first or last layers",
    "shortlist": "output-layer ids, most frequent in the answers first (0 = all)",
    "batch_tokens": "tokens (prompt and answer) per optimizer step",
    "hard_weight": "weight of the cross entropy on the target's own tokens",
    "val_every": "every N-th answer is validation",
    "time_limit": "minutes: the learning rate decays to 0 and training stops by then (0 = none)",
}


def default_target_dir() -> Path:
    from braid.model.loader import resolve_model_dir
    from braid.model.registry import default_model_file

    return resolve_model_dir(default_model_file(), torch.bfloat16)


def load_data(paths: list[Path], val_every: int) -> tuple[list[dict], list[dict]]:
    """Train and validation answers: every `val_every`-th answer is validation, and no training
    answer has a validation prompt (the templates repeat some prompts); duplicates dropped."""
    rows = [
        json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()
    ]
    rows = [r for r in rows if r["answer_ids"]]
    val = [r for r in rows if r["index"] % val_every == 0]
    held = {tuple(r["prompt_ids"]) for r in val}
    train, seen = [], set()
    for r in rows:
        key = (tuple(r["prompt_ids"]), tuple(r["answer_ids"]))
        if r["index"] % val_every and key[0] not in held and key not in seen:
            seen.add(key)
            train.append(r)
    return train, val


def rank_shortlist(rows: list[dict], size: int, vocab: int, keep: set[int]) -> list[int]:
    """The `size` ids with the most target probability mass over the answers' positions (its
    top-k, so also what it would have written; ties: smaller id), `keep` always in."""
    counts: Counter = Counter()
    for r in rows:
        for ids, logps in zip(r["top_ids"], r["top_logprobs"], strict=True):
            for t, lp in zip(ids, logps, strict=True):
                counts[t] += math.exp(lp)
    ranked = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    ids = list(dict.fromkeys([*sorted(keep), *ranked]))[:size]
    if len(ids) < size:  # fewer distinct ids than asked: fill with the lowest unused ids
        used = set(ids)
        ids += [i for i in range(vocab) if i not in used][: size - len(ids)]
    return sorted(ids)


class DraftLM(torch.nn.Module):
    """k Llama layers between the target's (frozen) embeddings and a shortlist head."""

    def __init__(self, target_dir: Path, layers: list[int], ids: list[int] | None):
        super().__init__()
        from safetensors.torch import load_file
        from transformers import LlamaConfig, LlamaModel

        cfg = json.loads((target_dir / "config.json").read_text())
        self.target_config = cfg
        self.config = LlamaConfig(**{**cfg, "num_hidden_layers": len(layers)})
        self.config._attn_implementation = "sdpa"
        self.body = LlamaModel(self.config)
        state = {
            k.removeprefix("model."): v
            for k, v in load_file(target_dir / "model.safetensors").items()
        }
        mine = {
            "embed_tokens.weight": state["embed_tokens.weight"],
            "norm.weight": state["norm.weight"],
        }
        for i, src in enumerate(layers):
            for k, v in state.items():
                if k.startswith(f"layers.{src}."):
                    mine[f"layers.{i}." + k.removeprefix(f"layers.{src}.")] = v
        self.body.load_state_dict({k: v.float() for k, v in mine.items()})
        self.body.embed_tokens.requires_grad_(False)
        vocab = cfg["vocab_size"]
        self.register_buffer("ids", torch.tensor(ids if ids else range(vocab)), persistent=False)
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] -> shortlist logits [B, T, K] (fp32)."""
        h = self.body(input_ids=input_ids).last_hidden_state.float()
        return h @ self.body.embed_tokens.weight[self.ids].float().t()


def make_batches(rows: list[dict], budget: int, rng: random.Random) -> list[list[dict]]:
    """Rows of similar length together, about `budget` padded tokens per batch, shuffled."""
    order = sorted(rows, key=lambda r: len(r["prompt_ids"]) + len(r["answer_ids"]))
    batches, cur, longest = [], [], 0
    for r in order:
        n = len(r["prompt_ids"]) + len(r["answer_ids"])
        if cur and max(longest, n) * (len(cur) + 1) > budget:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(r)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(batch: list[dict], pos_of: torch.Tensor, k: int):
    """Inputs [B, T], and per answer token: (row, column) of its logits, the target's top-k
    (shortlist positions, -1 = not in the shortlist) with probabilities, the written token."""
    seqs = [r["prompt_ids"] + r["answer_ids"][:-1] for r in batch]
    width = max(map(len, seqs))
    x = torch.zeros(len(seqs), width, dtype=torch.long)
    rows, cols, top, prob, hard = [], [], [], [], []
    for b, (r, s) in enumerate(zip(batch, seqs, strict=True)):
        x[b, : len(s)] = torch.tensor(s)
        start = len(r["prompt_ids"]) - 1
        n = len(r["answer_ids"])
        rows += [b] * n
        cols += range(start, start + n)
        top += [ids[:k] for ids in r["top_ids"]]
        prob += [lp[:k] for lp in r["top_logprobs"]]
        hard += r["answer_ids"]
    top_t = pos_of[torch.tensor(top)]
    return (
        x,
        torch.tensor(rows),
        torch.tensor(cols),
        top_t,
        torch.tensor(prob).exp(),
        pos_of[torch.tensor(hard)],
    )


def loss_and_stats(model: DraftLM, batch: list[dict], pos_of: torch.Tensor, hard_weight: float):
    x, rows, cols, top, p, hard = collate(batch, pos_of, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    logq = F.log_softmax(logits[rows, cols].float(), -1)  # [N, K]
    inside = top >= 0
    p_in = p * inside
    soft = -(p_in * logq.gather(1, top.clamp(min=0))).sum(1) / p_in.sum(1).clamp(min=1e-6)
    ok = hard >= 0
    hard_ce = -logq.gather(1, hard.clamp(min=0)[:, None])[:, 0]
    loss = soft.mean() + hard_weight * (hard_ce * ok).sum() / ok.sum().clamp(min=1)
    q_top = logq.gather(1, top.clamp(min=0)).exp() * inside
    stats = {
        "agree": (logq.argmax(1) == top[:, 0]).sum().item(),  # -1 never equals an argmax
        "overlap": torch.minimum(p, q_top).sum().item(),
        "tokens": len(rows),
        "covered": ok.sum().item(),
    }
    return loss, stats


@torch.no_grad()
def evaluate(model: DraftLM, val: list[dict], pos_of: torch.Tensor, budget: int) -> dict:
    model.eval()
    tot: Counter = Counter()
    for batch in make_batches(val, budget, random.Random(0)):
        _, s = loss_and_stats(model, batch, pos_of, 0.0)
        tot.update(s)
    model.train()
    n = max(1, tot["tokens"])
    return {
        "greedy_agreement": tot["agree"] / n,
        "overlap_top8": tot["overlap"] / n,
        "shortlist_coverage": tot["covered"] / n,
        "tokens": tot["tokens"],
    }


def train(cfg: DraftConfig, log: Any = print) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    target_dir = Path(cfg.target) if cfg.target else default_target_dir()
    files = [Path(f) for f in cfg.data.split(",")] if cfg.data else [default_out()]
    train_rows, val = load_data(files, cfg.val_every)
    metas = [f.with_suffix(".meta.json") for f in files]
    meta = {"files": [json.loads(m.read_text()) for m in metas if m.exists()]}
    stop_ids = {i for m in meta["files"] for i in m.get("stop_ids", [])}
    tcfg = json.loads((target_dir / "config.json").read_text())
    n_target, vocab = tcfg["num_hidden_layers"], tcfg["vocab_size"]
    if cfg.init_layers not in ("first", "last"):
        raise ValueError(f"--init-layers {cfg.init_layers!r}: choose first or last")
    src = (
        list(range(cfg.layers))
        if cfg.init_layers == "first"
        else list(range(n_target - cfg.layers, n_target))
    )
    keep = stop_ids | {tcfg.get("eos_token_id") or 0}
    ids = rank_shortlist(train_rows, cfg.shortlist, vocab, keep) if cfg.shortlist else None
    pos_of = torch.full((vocab,), -1, dtype=torch.long)
    pos_of[torch.tensor(ids if ids else range(vocab))] = torch.arange(len(ids) if ids else vocab)
    model = DraftLM(target_dir, src, ids)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(cfg.seed)
    per_epoch = len(make_batches(train_rows, cfg.batch_tokens, rng))
    steps = max(1, int(per_epoch * cfg.epochs))
    n_tok = sum(len(r["answer_ids"]) for r in train_rows)
    log(
        f"{len(train_rows)} train / {len(val)} val answers, {n_tok:,} answer tokens, "
        f"{steps} steps, layers {src}"
    )
    before = evaluate(model, val, pos_of, cfg.batch_tokens)
    log(f"initial: {before}")
    start, step, done = time.time(), 0, False
    while not done:
        for batch in make_batches(train_rows, cfg.batch_tokens, rng):
            # cosine decay over the steps, or over the time limit if that comes first
            frac = step / steps
            if cfg.time_limit:
                frac = max(frac, (time.time() - start) / (60 * cfg.time_limit))
            warm = min(1.0, (step + 1) / cfg.warmup)
            lr = cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
            for g in opt.param_groups:
                g["lr"] = lr
            loss, s = loss_and_stats(model, batch, pos_of, cfg.hard_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if step % 20 == 0:
                agree = s["agree"] / s["tokens"]
                spent = time.time() - start
                log(f"step {step}/{steps} loss {loss.item():.3f} agree {agree:.3f} {spent:.0f}s")
            if step >= steps or frac >= 1.0:
                done = True
                break
    seconds = time.time() - start
    after = evaluate(model, val, pos_of, cfg.batch_tokens)
    log(f"final: {after} in {seconds:.0f}s")
    export(model, Path(cfg.out), target_dir, ids, src)
    report = {
        "config": asdict(cfg),
        "target_dir": str(target_dir),
        "layers_from_target": src,
        "steps": step,
        "train_seconds": round(seconds, 1),
        "train_answers": len(train_rows),
        "val_answers": len(val),
        "train_answer_tokens": n_tok,
        "initial": before,
        "final": after,
        "data_meta": meta,
    }
    (Path(cfg.out) / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def export(
    model: DraftLM,
    out: Path,
    target_dir: Path,
    ids: list[int] | None,
    src: list[int],
    target_name: str = "SmolLM2-135M-Instruct",
) -> None:
    """config.json (+ the shared-embeddings record), model.safetensors (bf16, no embeddings),
    shortlist.json; written to a temporary directory, then moved into place."""
    from safetensors.torch import save_file

    from braid.model.tokenizer import Tokenizer

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        "model." + k: v.detach().to(torch.bfloat16).contiguous()
        for k, v in model.body.state_dict().items()
        if not k.startswith("embed_tokens")
    }
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tc = model.target_config
    cfg = {k: v for k, v in tc.items() if k not in ("quantization_config", "auto_map")}
    cfg.update(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        num_hidden_layers=model.config.num_hidden_layers,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    cfg[SHARED_KEY] = {
        "target": target_name,
        "hidden_size": tc["hidden_size"],
        "vocab_size": tc["vocab_size"],
        "vocabulary_sha256": vocabulary_fingerprint(Tokenizer(target_dir).id_to_token()),
        "shortlist": SHORTLIST_FILE if ids else None,
        "layers_from_target": src,
    }
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if ids:
        (tmp / SHORTLIST_FILE).write_text(json.dumps({"ids": ids}) + "\n")
    if out.exists():
        for f in ("config.json", "model.safetensors", SHORTLIST_FILE):
            (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()


def save_shared_draft(
    target_dir: Path, out: Path, layers: list[int], ids: list[int] | None, target_name: str
) -> Path:
    """An untrained shared-embedding draft: the target's `layers`, its norm, the `ids` head."""
    export(
        DraftLM(Path(target_dir), layers, ids),
        Path(out),
        Path(target_dir),
        ids,
        layers,
        target_name,
    )
    return Path(out)


def export_hf(draft_dir: Path, target_dir: Path, out: Path) -> Path:
    """The draft as a plain Hugging Face directory: its layers, the target's embeddings, a full
    tied head (what `transformers`' assisted generation can load)."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((draft_dir / "config.json").read_text())
    cfg.pop(SHARED_KEY, None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    state = load_file(str(draft_dir / "model.safetensors"))
    target = load_file(str(target_dir / "model.safetensors"))
    embed = next(v for k, v in target.items() if k.endswith("embed_tokens.weight"))
    state["model.embed_tokens.weight"] = embed.to(torch.bfloat16).contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (target_dir / f).exists():
            shutil.copy(target_dir / f, out / f)
    return out


def hf_draft_dir(draft_dir: Path | None = None, target_dir: Path | None = None) -> Path:
    """`export_hf` of a shared-embedding draft (default: the shipped one), cached in the braid
    cache by the draft's weights: the directory to give `transformers` as the assistant."""
    import hashlib

    from braid.methods.draft import SHIPPED_DRAFT
    from braid.model.registry import ASSETS
    from braid.training.corpus import cache_root

    src = Path(draft_dir) if draft_dir else ASSETS / SHIPPED_DRAFT
    key = hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()[:16]
    out = cache_root() / "drafts" / f"{src.name}-{key}-hf"
    if not (out / "model.safetensors").exists():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        export_hf(src, Path(target_dir) if target_dir else default_target_dir(), tmp)
        tmp.replace(out)
    return out


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train-draft",
        help="train a draft on its target's embeddings from distill-data answers",
        description=__doc__.split("\n\n")[0],
    )
    flags.add_config_arguments(p, DraftConfig, _HELP, {}, {"init_layers": ("first", "last")})
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        cfg = flags.config_from_args(DraftConfig, args)
        report = train(cfg, log=(lambda *a: None) if args.quiet else print)
        if not args.quiet:
            print(f"wrote {cfg.out}: greedy agreement {report['final']['greedy_agreement']:.3f}")
        return 0

    return flags.run_reporting_errors("train-draft", body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m braid.training.train_draft")
    flags.add_config_arguments(p, DraftConfig, _HELP, {}, {"init_layers": ("first", "last")})
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
