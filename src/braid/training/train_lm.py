"""``braid train-lm``: train a small Llama-architecture language model on an offline corpus.

What it does, in order:

1. loads the corpus (default: the CPython standard library, see :mod:`braid.training.corpus`, or
   ``--data FILE_OR_DIR``);
2. trains a byte-level BPE tokenizer on the training split, or reuses ``--tokenizer DIR`` (a draft
   model must share its target's tokenizer);
3. tokenizes the corpus once (cached by tokenizer and text hash under the braid cache dir);
4. trains ``transformers.LlamaForCausalLM`` from scratch: AdamW, linear warmup then cosine decay
   to ``min_lr_ratio * lr``, gradient clipping, fp32 master weights with bf16 autocast where the
   device supports it; each step's batch is random windows of ``context + 1`` tokens drawn with a
   generator seeded from ``(seed, step, shard)``, so a resumed run sees exactly the batches an
   uninterrupted one would (shards: see :mod:`braid.training.runtime`);
5. saves a resumable checkpoint (model, optimizer, scheduler, step, RNG states) to
   ``OUT/checkpoint/`` every ``--save-every`` steps, at the end, and on SIGINT/SIGTERM;
6. evaluates validation loss and perplexity on the held-out split and exports a Hugging Face model
   directory to ``OUT``: ``config.json``, ``model.safetensors`` (bf16), tokenizer files,
   ``generation_config.json``, a ``README.md`` model card and ``braid_card.json``.

Devices, the step loop, checkpoints and the distributed path (``torchrun --nproc-per-node N``
or ``accelerate launch``) are :mod:`braid.training.runtime`'s; ``--batch-size`` is per device and
per micro-batch, and N processes train on the batches of one process with N x ``--grad-accum``.

Run ``python -m braid.training.train_lm --help`` for the flags; a ``--config`` JSON file may set
any of them (keys are the flag names with underscores); explicit flags override the file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from braid.training import flags
from braid.training.corpus import EOS_TOKEN, cache_root, load_corpus
from braid.training.lm_card import build_card, export_model, write_card
from braid.training.runtime import (
    Runtime,
    Schedule,
    Trainer,
    count_parameters,
    load_checkpoint,
    resumed_config,
    seed_all,
    setup_runtime,
)
from braid.training.tokenizer import encode_docs, load_tokenizer, save_tokenizer, train_tokenizer

# export_model and write_card live in lm_card; they stay importable from here
__all__ = ["TrainConfig", "count_parameters", "export_model", "lr_at", "train", "write_card"]


@dataclass
class TrainConfig:
    """Every setting of a run; saved in the checkpoint and the model card."""

    out: str = "runs/lm"
    name: str = ""  # defaults to the out directory's name
    role: str = "target"  # target | draft | other: recorded in braid_card.json
    data: str | None = None  # text file or directory; None = CPython stdlib corpus
    tokenizer: str | None = None  # reuse this tokenizer directory instead of training one
    vocab_size: int = 8192
    hidden_size: int = 512
    num_layers: int = 8
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 1024
    context: int = 512
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    steps: int = 700
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 0  # 0 = torch's default
    device: str = "auto"
    precision: str = "auto"  # auto | bf16 | fp32 (autocast dtype; master weights stay fp32)
    eval_every: int = 0  # 0 = only at the end
    eval_tokens: int = 131072
    save_every: int = 200
    stop_after: int = 0  # stop (checkpoint + export) after this step; 0 = run all steps
    log_every: int = 10
    init: str | None = None  # start from this model directory's weights (same architecture)
    teacher: str | None = None  # distil from this model directory (same vocabulary)
    kd_weight: float = 1.0  # with a teacher: loss = (1 - w) * CE + w * KL(teacher || model)


# ---------------------------------------------------------------- data


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def prepare_data(
    cfg: TrainConfig, out: Path, rt: Runtime, log: Any = print
) -> tuple[Path, np.ndarray, np.ndarray, dict]:
    """Tokenizer dir, train and validation token streams, corpus metadata."""
    corpus = load_corpus(cfg.data)
    tok_dir = Path(cfg.tokenizer) if cfg.tokenizer else out / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        if cfg.tokenizer:
            raise FileNotFoundError(f"--tokenizer {tok_dir}: no tokenizer.json there")
        if rt.main:
            log(f"training a {cfg.vocab_size}-token byte-level BPE on {corpus.train_bytes:,} bytes")
            save_tokenizer(train_tokenizer(corpus.train, cfg.vocab_size), tok_dir, cfg.context)
        rt.barrier()
    tok = load_tokenizer(tok_dir)

    # Tokenizing 30 MB takes ~10 s on 2 cores; cache the streams by tokenizer and text hash.
    key = _sha((tok_dir / "tokenizer.json").read_bytes() + corpus.meta["name"].encode())
    text_key = _sha(
        "\x00".join(corpus.train[:50] + corpus.val[:50]).encode()
        + str((corpus.train_bytes, corpus.val_bytes)).encode()
    )
    cache = cache_root() / "tokens" / f"{key}-{text_key}.npz"
    if cache.exists():
        arrays = np.load(cache)
        train_ids, val_ids = arrays["train"], arrays["val"]
    else:
        train_ids, val_ids = encode_docs(tok, corpus.train), encode_docs(tok, corpus.val)
        if rt.main:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, train=train_ids, val=val_ids)
            tmp.replace(cache)
    meta = dict(corpus.meta, train_tokens=int(len(train_ids)), val_tokens=int(len(val_ids)))
    return tok_dir, train_ids, val_ids, meta


def sample_batch(
    ids: np.ndarray, batch: int, context: int, seed: int, step: int, shard: int
) -> torch.Tensor:
    """``batch`` random windows of ``context + 1`` tokens, a pure function of (seed, step,
    shard)."""
    rng = np.random.default_rng([seed, step, shard])
    starts = rng.integers(0, len(ids) - context - 1, size=batch)
    return torch.from_numpy(np.stack([ids[s : s + context + 1] for s in starts]).astype(np.int64))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr`` then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    return cfg.lr * Schedule(cfg.steps, cfg.warmup, cfg.min_lr_ratio).factor(step)


# ---------------------------------------------------------------- model


def build_model(cfg: TrainConfig, vocab_size: int, eos_id: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    mc = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.context,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=1e-5,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=None,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
    )
    mc._attn_implementation = "sdpa"
    return LlamaForCausalLM(mc)


def lm_loss(model: torch.nn.Module, window: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy of a ``[B, T+1]`` window, computed in fp32."""
    logits = model(input_ids=window[:, :-1]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), window[:, 1:].flatten())


def distill_loss(
    model: torch.nn.Module, teacher: torch.nn.Module, window: torch.Tensor, weight: float
) -> torch.Tensor:
    """(1 - weight) x next-token CE + weight x KL(teacher || model), per token, in fp32.

    Forward KL to the teacher's full next-token distribution (DistillSpec, Zhou et al. 2024):
    a draft trained this way matches what the target will accept, not just the data.
    """
    inputs, targets = window[:, :-1], window[:, 1:].flatten()
    logits = model(input_ids=inputs).logits.float().flatten(0, 1)
    log_q = F.log_softmax(logits, -1)
    with torch.no_grad():  # a teacher with a padded vocabulary: its ids past ours cannot occur
        teacher_logits = teacher(input_ids=inputs).logits.float().flatten(0, 1)
        log_p = F.log_softmax(teacher_logits[:, : logits.shape[1]], -1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
    if weight >= 1.0:
        return kl
    return (1 - weight) * F.nll_loss(log_q, targets) + weight * kl


def _need_model_dir(path: str, flag: str) -> None:
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {path}: not a model directory (no config.json there)")


def load_teacher(path: str, vocab: int, device: torch.device) -> torch.nn.Module:
    """A frozen teacher that scores the same token ids as the model being trained."""
    from transformers import AutoModelForCausalLM

    _need_model_dir(path, "--teacher")
    teacher = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    if teacher.config.vocab_size < vocab:  # a padded teacher vocabulary is fine: cut
        raise ValueError(
            f"--teacher {path}: its vocabulary has {teacher.config.vocab_size} tokens, fewer than "
            f"the tokenizer's {vocab}; distil with the teacher's own tokenizer (--tokenizer DIR)"
        )
    teacher.requires_grad_(False)
    return teacher


def load_init(model: torch.nn.Module, path: str) -> None:
    """Copy the weights of the model directory `path` into `model` (same architecture)."""
    from transformers import AutoModelForCausalLM

    _need_model_dir(path, "--init")
    src = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    try:
        model.load_state_dict(src.state_dict())
    except RuntimeError as e:  # the first line is a header; the second names a mismatch
        lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        msg = f"--init {path}: its weights do not fit this architecture ({detail})"
        raise ValueError(msg) from None


@torch.no_grad()
def evaluate(model: torch.nn.Module, ids: np.ndarray, cfg: TrainConfig, rt: Runtime) -> float:
    """Mean loss over consecutive non-overlapping windows of the first ``eval_tokens`` tokens."""
    was_training = model.training
    model.eval()
    n = min(len(ids) - 1, cfg.eval_tokens) // cfg.context
    total, count = 0.0, 0
    for i in range(0, n, cfg.batch_size):
        rows = [
            ids[j * cfg.context : j * cfg.context + cfg.context + 1]
            for j in range(i, min(n, i + cfg.batch_size))
        ]
        w = torch.from_numpy(np.stack(rows).astype(np.int64)).to(rt.device)
        with rt.autocast():
            total += lm_loss(model, w).item() * len(rows)
        count += len(rows)
    model.train(was_training)
    return total / max(1, count)


# ---------------------------------------------------------------- the run


RESUME_OVERRIDABLE = frozenset(
    {"steps", "stop_after", "threads", "device", "save_every", "eval_every", "log_every"}
)


def train(
    cfg: TrainConfig,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    command: str = "",
    quiet: bool = False,
) -> dict:
    """Run (or resume) training and export the model; returns the card as a dict.

    On ``resume`` the settings come from ``OUT/checkpoint`` (``cfg.out`` only says where it is),
    except those in ``overrides`` (keys of ``RESUME_OVERRIDABLE``). A changed ``steps`` reshapes the
    cosine schedule from the current step on; during warmup it gives exactly the run that would
    have used that value from the start.
    """
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoint"
    state = load_checkpoint(ckpt_dir) if resume else None
    if state is not None:
        cfg = resumed_config(TrainConfig, state, overrides or {}, RESUME_OVERRIDABLE)
        cfg.out = str(out)
    cfg.name = cfg.name or out.name
    # fail on bad distillation settings before minutes of data preparation
    if not 0.0 <= cfg.kd_weight <= 1.0:
        raise ValueError(f"--kd-weight {cfg.kd_weight}: expected a value in [0, 1]")
    for flag, path in (("--init", cfg.init), ("--teacher", cfg.teacher)):
        if path:
            _need_model_dir(path, flag)
    rt = setup_runtime(cfg.device, cfg.precision, cfg.threads)
    log = rt.logger(quiet)
    if rt.main:
        out.mkdir(parents=True, exist_ok=True)

    tok_dir, train_ids, val_ids, corpus_meta = prepare_data(cfg, out, rt, log)
    tok = load_tokenizer(tok_dir)
    eos_id = tok.token_to_id(EOS_TOKEN)
    vocab = tok.get_vocab_size()

    seed_all(cfg.seed)  # same initial weights on every rank
    model = build_model(cfg, vocab, eos_id).to(rt.device)
    n_params = count_parameters(model)
    if cfg.init and state is None:
        load_init(model, cfg.init)
    teacher = load_teacher(cfg.teacher, vocab, rt.device) if cfg.teacher else None
    trainer = Trainer.from_config(rt, model, cfg, out, quiet)
    if state is not None:
        trainer.restore(state)
        log(f"resumed from {ckpt_dir} at step {trainer.step}")
    progress = trainer.progress
    log(
        f"{cfg.name}: {n_params:,} parameters, {len(train_ids):,} train tokens, device "
        f"{rt.device} x{rt.world}, autocast {rt.autocast_dtype}, threads {torch.get_num_threads()}"
    )
    if trainer.step == 0 and rt.main:
        progress["initial_val_loss"] = evaluate(model, val_ids, cfg, rt)
        log(f"initial validation loss {progress['initial_val_loss']:.4f}")

    def micro_loss(m: torch.nn.Module, step: int, shard: int) -> tuple[torch.Tensor, dict]:
        w = sample_batch(train_ids, cfg.batch_size, cfg.context, cfg.seed, step, shard)
        w = w.to(rt.device)
        loss = lm_loss(m, w) if teacher is None else distill_loss(m, teacher, w, cfg.kd_weight)
        return loss, {"tokens": w.shape[0] * cfg.context}

    last = cfg.steps if not cfg.stop_after else min(cfg.steps, cfg.stop_after)

    def on_step(rec: dict) -> None:
        if rt.main and cfg.eval_every and rec["step"] % cfg.eval_every == 0 and rec["step"] < last:
            vl = evaluate(model, val_ids, cfg, rt)
            progress.setdefault("evals", []).append({"step": rec["step"], "val_loss": vl})
            log(f"step {rec['step']}: validation loss {vl:.4f}")

    # Ctrl-C / SIGTERM finishes the current step; the checkpoint and export below still run.
    checkpoint = (ckpt_dir, asdict(cfg))
    trainer.fit(micro_loss, last, on_step=on_step, checkpoint=checkpoint, save_every=cfg.save_every)

    card: dict = {}
    if rt.main:
        trainer.save(*checkpoint)
        val_loss = evaluate(model, val_ids, cfg, rt)
        n_eval = (min(len(val_ids) - 1, cfg.eval_tokens) // cfg.context) * cfg.context
        log(f"step {trainer.step}: validation loss {val_loss:.4f}, ppl {math.exp(val_loss):.2f}")
        export_model(model, out, tok_dir, eos_id)
        card = build_card(cfg, rt, trainer, n_params, vocab, val_loss, n_eval, corpus_meta)
        card["command"] = command or "braid train-lm " + " ".join(sys.argv[1:])
        # Keep measurements added later (e.g. by braid.training.compare) across re-exports.
        old = out / "braid_card.json"
        if old.exists():
            with contextlib.suppress(ValueError, KeyError):
                prev = json.loads(old.read_text())
                if "measurements" in prev:
                    card["measurements"] = prev["measurements"]
        write_card(out, card)
    rt.barrier()
    return card


# ---------------------------------------------------------------- command line


_HELP = {
    "out": "output model directory (checkpoints go to OUT/checkpoint)",
    "name": "model name for the card (default: the out directory's name)",
    "role": "target, draft or other (recorded in braid_card.json)",
    "data": "plain-text file or directory to train on (default: CPython stdlib sources)",
    "tokenizer": "reuse the tokenizer in this directory (a draft shares its target's)",
    "vocab_size": "BPE vocabulary size when training a tokenizer",
    "context": "training sequence length in tokens",
    "batch_size": "sequences per optimizer step per device (before accumulation)",
    "grad_accum": "micro-batches accumulated per optimizer step",
    "lr": "peak learning rate (linear warmup, cosine decay)",
    "min_lr_ratio": "final learning rate as a fraction of the peak",
    "warmup": "warmup steps",
    "threads": "torch CPU threads (0 = default)",
    "device": "auto (cuda > mps > cpu), or a torch device string",
    "precision": "auto (bf16 autocast where supported), bf16 or fp32",
    "eval_every": "evaluate validation loss every N steps (0 = only at the end)",
    "eval_tokens": "validation tokens per evaluation",
    "save_every": "checkpoint every N steps",
    "stop_after": "stop after this step (checkpoint + export); resume later with --resume",
    "num_layers": "transformer layers",
    "num_heads": "attention heads",
    "num_kv_heads": "key/value heads",
    "intermediate_size": "MLP intermediate size",
    "hidden_size": "hidden size",
    "init": "start from the weights of this model directory (same architecture)",
    "teacher": "distil from this model directory: KL to its next-token distribution "
    "(a draft distilled from its target is accepted more often)",
    "kd_weight": "with --teacher: weight of the KL term; 1 - this weights the data's CE",
}


_ALIASES = {
    "num_layers": ("--layers", "--num-layers"),
    "num_heads": ("--heads", "--num-heads"),
    "num_kv_heads": ("--kv-heads", "--num-kv-heads"),
}


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint (settings come from the checkpoint; "
        "--steps, --stop-after, --threads, --device may change)",
    )
    flags.add_config_arguments(p, TrainConfig, _HELP, _ALIASES)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < ``--config`` JSON < explicit flags."""
    return flags.config_from_args(TrainConfig, args)


def run(args: argparse.Namespace) -> int:
    """Handler of ``braid train-lm``: returns the process exit code."""

    def body() -> int:
        cfg = config_from_args(args)
        overrides = flags.explicit_flags(TrainConfig, args) if args.resume else None
        card = train(
            cfg,
            resume=args.resume,
            overrides=overrides,
            command=flags.command_line("train-lm", args),
            quiet=args.quiet,
        )
        if card and not args.quiet:
            print(f"wrote {cfg.out}: val loss {card['val_loss']:.4f}, ppl {card['val_ppl']:.2f}")
        return 0

    return flags.run_reporting_errors("train-lm", body)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train-lm`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "train-lm",
        help="train a small Llama-architecture LM (and its BPE tokenizer) on an offline corpus",
        description=__doc__.split("\n\n")[0],
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m braid.training.train_lm", description=__doc__.split("\n\n")[0]
    )
    _add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
