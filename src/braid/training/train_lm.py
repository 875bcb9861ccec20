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
   generator seeded from ``(seed, step, rank)``, so a resumed run sees exactly the batches an
   uninterrupted one would;
5. saves a resumable checkpoint (model, optimizer, scheduler, step, RNG states) to
   ``OUT/checkpoint/`` every ``--save-every`` steps, at the end, and on SIGINT/SIGTERM;
6. evaluates validation loss and perplexity on the held-out split and exports a Hugging Face model
   directory to ``OUT``: ``config.json``, ``model.safetensors`` (bf16), tokenizer files,
   ``generation_config.json``, a ``README.md`` model card and ``braid_card.json``.

Devices: CUDA if available, else Apple MPS, else CPU (``--device`` overrides). Several devices:
launch with ``torchrun --nproc-per-node N`` or ``accelerate launch`` (which starts the same
processes through torchrun); when ``WORLD_SIZE > 1`` the script initialises ``torch.distributed``
itself (NCCL on CUDA, Gloo otherwise), wraps the model in DistributedDataParallel, draws different
windows on each rank, and only rank 0 writes files. ``accelerate`` itself is never imported.
``--batch-size`` is per device.

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
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from braid.training.corpus import EOS_TOKEN, cache_root, load_corpus
from braid.training.tokenizer import (
    TOKENIZER_FILES,
    encode_docs,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)


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


# ---------------------------------------------------------------- devices and distribution


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Pick the device and autocast dtype; join the process group under torchrun/accelerate."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device != "auto":
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)

    dtype: torch.dtype | None = None
    if cfg.precision == "bf16":
        dtype = torch.bfloat16
    elif cfg.precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16
        elif device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            # Native bf16 dot products (avx512_bf16 / AMX): about 2x fp32 matmul speed.
            dtype = torch.bfloat16
    elif cfg.precision != "fp32":
        raise ValueError(f"--precision {cfg.precision}: expected auto, bf16 or fp32")
    return Runtime(device, dtype, rank, world)


def _autocast(rt: Runtime) -> contextlib.AbstractContextManager:
    if rt.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(rt.device.type, dtype=rt.autocast_dtype)


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
        if rt.world > 1:
            torch.distributed.barrier()
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
    ids: np.ndarray, batch: int, context: int, seed: int, step: int, rank: int
) -> torch.Tensor:
    """``batch`` random windows of ``context + 1`` tokens; a pure function of (seed, step, rank)."""
    rng = np.random.default_rng([seed, step, rank])
    starts = rng.integers(0, len(ids) - context - 1, size=batch)
    return torch.from_numpy(np.stack([ids[s : s + context + 1] for s in starts]).astype(np.int64))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr`` then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    cosine = 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


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


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters: tied input/output embeddings count once."""
    return sum(p.numel() for p in model.parameters())


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
        with _autocast(rt):
            total += lm_loss(model, w).item() * len(rows)
        count += len(rows)
    model.train(was_training)
    return total / max(1, count)


# ---------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    progress: dict,
    cfg: TrainConfig,
) -> None:
    """Write ``path/state.pt`` atomically (a crash mid-write leaves the previous one intact)."""
    path.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "progress": progress,
        "config": asdict(cfg),
        "rng": _rng_state(),
    }
    tmp = path / "state.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(path / "state.pt")


# ---------------------------------------------------------------- export


def export_model(model: torch.nn.Module, out: Path, tok_dir: Path, eos_id: int) -> None:
    """Save a Hugging Face model directory with bf16 weights, tokenizer and generation config."""
    import copy

    from transformers import GenerationConfig

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    bf16.config.dtype = torch.bfloat16
    bf16.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tok_dir / name).resolve() != (out / name).resolve():
            shutil.copyfile(tok_dir / name, out / name)
    GenerationConfig(
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        do_sample=True,
        temperature=0.8,
        top_p=0.95,
        max_new_tokens=256,
    ).save_pretrained(out)


def _fmt_int(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def write_card(out: Path, card: dict) -> None:
    """``braid_card.json`` (machine-readable) and ``README.md`` (the model card)."""
    (out / "braid_card.json").write_text(json.dumps(card, indent=2) + "\n")
    a, c, t = card["architecture"], card["corpus"], card["training"]
    extra = card.get("measurements", {})
    lines = [
        "---",
        f"license: {card['license']}",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [braid, llama, python-code]",
        "---",
        "",
        f"# braid `{card['name']}` ({card['role']} model)",
        "",
        f"A {_fmt_int(card['parameters'])}-parameter Llama-architecture causal language model "
        f"trained from scratch by `braid train-lm` on Python source code. It is braid's bundled "
        f"default {card['role']}: small enough to ship inside the package and run on a laptop CPU, "
        "good for demonstrating and testing decoding methods, not for useful completions.",
        "",
        "## Results",
        "",
        "| metric | value |",
        "|---|---|",
        f"| validation loss (nats/token) | {card['val_loss']:.4f} |",
        f"| validation perplexity | {card['val_ppl']:.2f} |",
        f"| validation tokens evaluated | {card['val_tokens_evaluated']:,} |",
    ]
    for k, v in extra.items():
        lines.append(f"| {k} | {v} |")
    lines += [
        "",
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        "| class | `LlamaForCausalLM` |",
        f"| parameters (tied embeddings counted once) | {card['parameters']:,} |",
        f"| hidden size | {a['hidden_size']} |",
        f"| layers | {a['num_layers']} |",
        f"| attention heads / kv heads | {a['num_heads']} / {a['num_kv_heads']} |",
        f"| MLP intermediate size | {a['intermediate_size']} |",
        f"| vocabulary | {a['vocab_size']} (byte-level BPE, eos `{EOS_TOKEN}`, no bos) |",
        f"| context length | {a['context']} |",
        f"| tied embeddings | {a['tie_embeddings']} |",
        "| weights | bf16 safetensors |",
        "",
        "## Training data",
        "",
        f"- **Corpus**: {c['name']}: {c['source']}.",
        f"- **License**: {c['license']}.",
        f"- **Size**: {c.get('files', '?')} files; {c.get('train_bytes', 0):,} bytes / "
        f"{c.get('train_tokens', 0):,} tokens train, {c.get('val_bytes', 0):,} bytes / "
        f"{c.get('val_tokens', 0):,} tokens validation.",
        f"- **Split**: {c['split']}.",
        "",
        "## Training",
        "",
        f"- steps: {t['steps_done']:,} of {t['steps_planned']:,} planned; batch "
        f"{t['batch_size']} x {t['grad_accum']} accumulation x {t['world_size']} device(s) "
        f"x {a['context']} tokens",
        f"- tokens seen: {card['tokens_seen']:,}",
        f"- optimizer: AdamW (betas 0.9/0.95, weight decay {t['weight_decay']}), peak lr "
        f"{t['lr']}, {t['warmup']} warmup steps, cosine decay to {t['min_lr_ratio']} x peak, "
        f"gradient clip {t['grad_clip']}",
        f"- precision: fp32 master weights, {t['precision']} autocast",
        f"- seed: {t['seed']}",
        f"- training time: {card['train_seconds'] / 60:.1f} min on {t['device']}",
        f"- machine: {t['machine']}",
        "",
        "## Reproduce",
        "",
        "```",
        card["command"],
        "```",
        "",
    ]
    if card.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in card["notes"]] + [""]
    (out / "README.md").write_text("\n".join(lines))


def _machine() -> str:
    name = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    return f"{name or 'unknown CPU'}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"


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
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    ckpt_dir = out / "checkpoint"
    if resume:
        if not (ckpt_dir / "state.pt").exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_dir / 'state.pt'}")
        state = torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=False)
        saved = TrainConfig(**state["config"])
        # The run's identity comes from the checkpoint; only these may change on resume.
        for k, v in (overrides or {}).items():
            if k not in RESUME_OVERRIDABLE:
                raise ValueError(f"--resume: {k} cannot change, it comes from the checkpoint")
            setattr(saved, k, v)
        saved.out = cfg.out
        cfg = saved
    else:
        state = None
    cfg.name = cfg.name or out.name
    # fail on bad distillation settings before minutes of data preparation
    if not 0.0 <= cfg.kd_weight <= 1.0:
        raise ValueError(f"--kd-weight {cfg.kd_weight}: expected a value in [0, 1]")
    for flag, path in (("--init", cfg.init), ("--teacher", cfg.teacher)):
        if path:
            _need_model_dir(path, flag)
    rt = setup_runtime(cfg)
    log = (lambda *a: None) if (quiet or not rt.main) else (lambda *a: print(*a, flush=True))
    if rt.main:
        out.mkdir(parents=True, exist_ok=True)

    tok_dir, train_ids, val_ids, corpus_meta = prepare_data(cfg, out, rt, log)
    tok = load_tokenizer(tok_dir)
    eos_id = tok.token_to_id(EOS_TOKEN)
    vocab = tok.get_vocab_size()

    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_model(cfg, vocab, eos_id).to(rt.device)
    n_params = count_parameters(model)
    if cfg.init and state is None:
        load_init(model, cfg.init)
    teacher = load_teacher(cfg.teacher, vocab, rt.device) if cfg.teacher else None
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    step, progress = 0, {"tokens_seen": 0, "train_seconds": 0.0, "history": []}
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, progress = state["step"], state["progress"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        log(f"resumed from {ckpt_dir} at step {step}")
    train_model = model
    if rt.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )

    log(
        f"{cfg.name}: {n_params:,} parameters, {len(train_ids):,} train tokens, device "
        f"{rt.device} x{rt.world}, autocast {rt.autocast_dtype}, threads {torch.get_num_threads()}"
    )
    if step == 0 and rt.main:
        progress["initial_val_loss"] = evaluate(model, val_ids, cfg, rt)
        log(f"initial validation loss {progress['initial_val_loss']:.4f}")

    # Stop cleanly on Ctrl-C / SIGTERM: finish the current step, checkpoint, export.
    stop = {"now": False}

    def _on_signal(signum: int, frame: Any) -> None:
        stop["now"] = True

    old_handlers = {}
    if rt.main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                old_handlers[sig] = signal.signal(sig, _on_signal)

    last = cfg.steps if not cfg.stop_after else min(cfg.steps, cfg.stop_after)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.context * rt.world
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        disable=quiet or not rt.main,
        dynamic_ncols=True,
        unit="step",
        file=sys.stderr,
    )
    model.train()
    t_window, tok_window = time.perf_counter(), 0
    try:
        while step < last and not stop["now"]:
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                w = sample_batch(
                    train_ids,
                    cfg.batch_size,
                    cfg.context,
                    cfg.seed,
                    step * cfg.grad_accum + micro,
                    rt.rank,
                ).to(rt.device)
                sync = (micro == cfg.grad_accum - 1) or rt.world == 1
                ctx = contextlib.nullcontext() if sync else train_model.no_sync()
                with ctx, _autocast(rt):
                    if teacher is None:
                        loss = lm_loss(train_model, w) / cfg.grad_accum
                    else:
                        loss = distill_loss(train_model, teacher, w, cfg.kd_weight)
                        loss = loss / cfg.grad_accum
                loss.backward()
                loss_sum += loss.item()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            progress["tokens_seen"] += tokens_per_step
            progress["train_seconds"] += time.perf_counter() - t0
            tok_window += tokens_per_step
            if rt.main:
                progress["history"].append(
                    {"step": step, "loss": loss_sum, "lr": lr, "grad_norm": gnorm}
                )
                elapsed = time.perf_counter() - t_window
                bar.set_postfix(
                    loss=f"{loss_sum:.3f}", tok_s=f"{tok_window / elapsed:,.0f}", refresh=False
                )
                bar.update(1)
                if cfg.log_every and step % cfg.log_every == 0:
                    log_line = {
                        "step": step,
                        "loss": round(loss_sum, 4),
                        "lr": lr,
                        "tok_s": round(tok_window / elapsed),
                        "elapsed_s": round(progress["train_seconds"], 1),
                    }
                    with open(out / "train_log.jsonl", "a") as f:
                        f.write(json.dumps(log_line) + "\n")
                    t_window, tok_window = time.perf_counter(), 0
                if cfg.eval_every and step % cfg.eval_every == 0 and step < last:
                    vl = evaluate(model, val_ids, cfg, rt)
                    progress.setdefault("evals", []).append({"step": step, "val_loss": vl})
                    bar.write(f"step {step}: validation loss {vl:.4f}")
                if cfg.save_every and step % cfg.save_every == 0 and step < last:
                    save_checkpoint(ckpt_dir, model, opt, step, progress, cfg)
    finally:
        bar.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)

    card: dict = {}
    if rt.main:
        save_checkpoint(ckpt_dir, model, opt, step, progress, cfg)
        val_loss = evaluate(model, val_ids, cfg, rt)
        n_eval = (min(len(val_ids) - 1, cfg.eval_tokens) // cfg.context) * cfg.context
        log(f"step {step}: validation loss {val_loss:.4f}, perplexity {math.exp(val_loss):.2f}")
        export_model(model, out, tok_dir, eos_id)
        card = {
            "name": cfg.name,
            "role": cfg.role,
            "license": "apache-2.0",
            "parameters": n_params,
            "val_loss": round(val_loss, 4),
            "val_ppl": round(math.exp(val_loss), 3),
            "initial_val_loss": round(progress.get("initial_val_loss", float("nan")), 4),
            "val_tokens_evaluated": n_eval,
            "train_seconds": round(progress["train_seconds"], 1),
            "tokens_seen": progress["tokens_seen"],
            "steps": step,
            "corpus": corpus_meta,
            "architecture": {
                "class": "LlamaForCausalLM",
                "hidden_size": cfg.hidden_size,
                "num_layers": cfg.num_layers,
                "num_heads": cfg.num_heads,
                "num_kv_heads": cfg.num_kv_heads,
                "intermediate_size": cfg.intermediate_size,
                "vocab_size": vocab,
                "context": cfg.context,
                "tie_embeddings": cfg.tie_embeddings,
            },
            "training": {
                "steps_done": step,
                "steps_planned": cfg.steps,
                "batch_size": cfg.batch_size,
                "grad_accum": cfg.grad_accum,
                "world_size": rt.world,
                "lr": cfg.lr,
                "warmup": cfg.warmup,
                "min_lr_ratio": cfg.min_lr_ratio,
                "weight_decay": cfg.weight_decay,
                "grad_clip": cfg.grad_clip,
                "precision": str(rt.autocast_dtype).replace("torch.", "")
                if rt.autocast_dtype
                else "fp32 (no)",
                "seed": cfg.seed,
                "device": str(rt.device),
                "machine": _machine(),
                "config": asdict(cfg),
            },
            "command": command or "braid train-lm " + " ".join(sys.argv[1:]),
        }
        # Keep measurements added later (e.g. by braid.training.compare) across re-exports.
        old = out / "braid_card.json"
        if old.exists():
            with contextlib.suppress(ValueError, KeyError):
                prev = json.loads(old.read_text())
                if "measurements" in prev:
                    card["measurements"] = prev["measurements"]
        write_card(out, card)
    if rt.world > 1:
        torch.distributed.barrier()
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


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON file with any of the settings below")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint (settings come from the checkpoint; "
        "--steps, --stop-after, --threads, --device may change)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    aliases = {
        "num_layers": ("--layers", "--num-layers"),
        "num_heads": ("--heads", "--num-heads"),
        "num_kv_heads": ("--kv-heads", "--num-kv-heads"),
    }
    for f in fields(TrainConfig):
        flags = aliases.get(f.name, ("--" + f.name.replace("_", "-"),))
        text = _HELP.get(f.name, f.name.replace("_", " "))
        if f.default not in (None, ""):
            text += f" (default {f.default})"
        if str(f.type) == "bool":
            p.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, help=text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(*flags, dest=f.name, type=kind, default=None, help=text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < ``--config`` JSON < explicit flags."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(json.loads(Path(args.config).read_text()))
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"--config: unknown keys {sorted(unknown)}")
    for n in names:
        v = getattr(args, n, None)
        if v is not None:
            values[n] = v
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    """Handler of ``braid train-lm``: returns the process exit code."""
    try:
        cfg = config_from_args(args)
    except (ValueError, TypeError, OSError) as e:
        print(f"braid train-lm: {e}", file=sys.stderr)
        return 2
    command = (
        "braid train-lm " + " ".join(a for a in sys.argv[1:] if a != "train-lm") if sys.argv else ""
    )
    overrides = None
    if args.resume:
        overrides = {
            k: getattr(args, k) for k in RESUME_OVERRIDABLE if getattr(args, k) is not None
        }
    try:
        card = train(
            cfg, resume=args.resume, overrides=overrides, command=command, quiet=args.quiet
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"braid train-lm: {e}", file=sys.stderr)
        return 2
    if card and not args.quiet:
        print(f"wrote {cfg.out}: val loss {card['val_loss']:.4f}, ppl {card['val_ppl']:.2f}")
    return 0


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
