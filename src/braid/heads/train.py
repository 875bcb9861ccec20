"""``braid train-heads``: train CP heads on a frozen (or jointly fine-tuned) base model.

1. tokenizes the corpus (default: the CPython stdlib corpus of :mod:`braid.training.corpus`, or
   ``--data FILE_OR_DIR``) with the base model's own tokenizer;
2. frozen backbone (default): runs ``transformers``' model once over ``--train-tokens`` tokens in
   windows of ``--context`` and caches the final-normed hidden states (bf16, under the braid cache
   dir, keyed by weights and settings), so further runs with other n / rank reuse them;
3. trains the heads with AdamW (cosine decay) on random positions of the cache: joint NLL of the
   next n tokens plus ``--balance`` x the load-balancing term (see :mod:`braid.heads.loss`);
   the base model's unembedding is the heads' shared, frozen output layer;
4. ``--finetune``: the backbone is trained too (embedding frozen, it is the shared unembedding),
   on fresh windows each step with loss = LM loss + heads loss; the fine-tuned model is exported
   to ``OUT/model`` and the heads refer to it;
5. evaluates the joint validation NLL (nats per position) and writes ``OUT/heads.safetensors`` and
   ``OUT/heads.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from braid.heads.generated import continue_text, generated_rows
from braid.heads.io import save_heads
from braid.heads.loss import gather_targets, joint_nll, load_balance
from braid.heads.module import KINDS, CPHeads, HeadsConfig
from braid.heads.tree import expected_tokens, fit_template, true_ranks
from braid.training import flags
from braid.training.runtime import Schedule, Trainer, adamw, native_bf16, seed_all, setup_runtime

TARGETS = ("data", "greedy", "generated")
TREE_NODES = 32  # draft tree template fitted on the validation set (heads-tree uses a prefix)


@dataclass
class HeadsTrainConfig:
    out: str
    model: str | None = None  # base model dir; None = the bundled target
    data: str | None = None
    n: int = 4
    rank: int = 8
    kind: str = "residual"
    bottleneck: int = 64
    base_first: bool = False
    steps: int = 500
    batch_size: int = 64  # positions per step
    lr: float = 3e-3
    balance: float = 0.01  # weight of the load-balancing term
    train_tokens: int = 200_000
    val_tokens: int = 16_384
    context: int = 512
    # data: the text's next tokens; greedy: the model's argmax after each text token;
    # generated: the model's own continuations of corpus prompts (braid.heads.generated);
    # None: generated, or data with finetune (the targets of a moving model would go stale)
    targets: str | None = None
    gen_prompt: int = 64  # generated: prompt tokens per continuation
    gen_tokens: int = 192  # generated: new tokens per continuation
    gen_temperatures: str = "0,1"  # generated: prompts split among these (0 = greedy)
    finetune: bool = False
    finetune_lr: float = 1e-4
    seed: int = 0
    threads: int = 0
    device: str = "auto"


def load_base(model_dir: Path, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    return model.to(device).eval().requires_grad_(False)


def token_streams(model_dir: Path, data: str | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train and validation token ids of the corpus, encoded with the model's tokenizer."""
    from braid.training.corpus import load_corpus
    from braid.training.tokenizer import encode_docs, load_tokenizer

    corpus = load_corpus(data)
    tok = load_tokenizer(model_dir)
    return encode_docs(tok, corpus.train), encode_docs(tok, corpus.val), corpus.meta


def vocabulary_sha256(model_dir: Path) -> str:
    from braid.methods.draft import vocabulary_fingerprint
    from braid.model.tokenizer import Tokenizer

    return vocabulary_fingerprint(Tokenizer(model_dir).id_to_token())


MAX_N = 64  # windows leave room for this many targets, so every n shares one hidden cache


def window_starts(length: int, tokens: int, context: int, seed: int) -> np.ndarray:
    """Start offsets of tokens // context distinct windows (independent of n)."""
    count = max(1, tokens // context)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(length - context - MAX_N, size=count, replace=False))


@torch.no_grad()
def hidden_states(
    model: torch.nn.Module, ids: np.ndarray, starts: np.ndarray, context: int, batch: int = 4
) -> torch.Tensor:
    """Final-normed hidden states [windows, context, d] (bf16) of the windows at `starts`."""
    rows = np.stack([ids[s : s + context] for s in starts]).astype(np.int64)
    return window_hidden(model, torch.from_numpy(rows), batch)


@torch.no_grad()
def window_hidden(model: torch.nn.Module, rows: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """Final-normed hidden states [W, L, d] (bf16) of token windows rows [W, L]."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(rows), batch):
        h = model.model(input_ids=rows[i : i + batch].to(device)).last_hidden_state
        out.append(h.to(torch.bfloat16).cpu())
    return torch.cat(out)


def targets_for(ids: np.ndarray, starts: np.ndarray, context: int, n: int) -> torch.Tensor:
    """x_{t+1..t+n} for every window position: [windows, context, n]."""
    offsets = starts[:, None, None] + np.arange(context)[None, :, None] + np.arange(1, n + 1)
    return torch.from_numpy(ids[offsets].astype(np.int64))


@torch.no_grad()
def greedy_targets(
    hidden: torch.Tensor, unembed, n: int, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-distillation targets: the model's own argmax token after each position.

    hidden [windows, context, d] -> (targets [rows, n], rows [rows]) where row t of a window
    gets argmax p(. | x_<=t+s-1) for s = 1..n (teacher-forced on the text), and `rows` indexes
    the flattened hidden states that have all n inside the window. Greedy verification keeps a
    drafted token only when it is the model's argmax, so these are what a greedy draft should
    predict.
    """
    w, c, _ = hidden.shape
    flat = hidden.flatten(0, 1)
    best = torch.cat(
        [unembed(flat[i : i + chunk].float()).argmax(-1) for i in range(0, flat.shape[0], chunk)]
    ).view(w, c)
    t = torch.arange(c - n + 1)
    targets = torch.stack([best[:, t + s] for s in range(n)], dim=-1)  # [w, c - n + 1, n]
    rows = (torch.arange(w)[:, None] * c + t[None, :]).flatten()
    return targets.flatten(0, 1), rows


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _cached(model_dir: Path, what: str, payload: bytes, compute, log):
    """`compute()` once per model weights and inputs: stored under the braid cache dir."""
    from braid.training.corpus import cache_root

    weights = sorted(model_dir.glob("*.safetensors"))
    key = hashlib.sha256(
        "|".join([*(_sha_file(w) for w in weights), what]).encode() + payload
    ).hexdigest()[:20]
    path = cache_root() / "heads_hidden" / f"{key}.pt"
    if path.exists():
        return torch.load(path)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # ranks of a distributed run race here
    torch.save(value, tmp)
    tmp.replace(path)
    return value


def cached_hidden(model, model_dir, ids, starts, context, tag: str, log) -> torch.Tensor:
    """Hidden states of corpus windows, computed and stored on a cache miss."""

    def compute() -> torch.Tensor:
        log(f"computing hidden states of {len(starts) * context:,} {tag} tokens")
        return hidden_states(model, ids, starts, context)

    payload = starts.tobytes() + ids[: 1 << 16].tobytes()
    return _cached(model_dir, f"{tag}|{context}", payload, compute, log)


def generated_set(
    model,
    model_dir: Path,
    ids: np.ndarray,
    tokens: int,
    cfg: HeadsTrainConfig,
    seed: int,
    tag: str,
    log,
    quiet: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden [N, d], targets [N, n], greedy [N] bool) of the model's own continuations of
    corpus windows: tokens // (gen_prompt + gen_tokens) prompts of gen_prompt tokens, split
    evenly among the temperatures of cfg.gen_temperatures (see braid.heads.generated);
    `greedy` marks the rows of greedy continuations."""
    from tqdm.auto import tqdm

    p, g = cfg.gen_prompt, cfg.gen_tokens
    temps = parse_temperatures(cfg.gen_temperatures)
    count = max(len(temps), tokens // (p + g))
    starts = window_starts(len(ids), count * p, p, seed)
    prompts = torch.from_numpy(np.stack([ids[s : s + p] for s in starts]).astype(np.int64))
    hidden, targets, greedy = [], [], []
    for i, temp in enumerate(temps):
        part = prompts[i :: len(temps)]

        def compute(part=part, temp=temp, i=i) -> dict:
            how = "greedy" if temp == 0 else f"T={temp:g}"
            log(f"generating {len(part)} x {g} tokens ({how}) and their hidden states ({tag})")
            with tqdm(total=len(part), disable=quiet, unit="seq", file=sys.stderr) as bar:
                seqs = continue_text(model, part, g, temp, seed=seed + i, bar=bar)
            return {"ids": seqs, "hidden": window_hidden(model, seqs)}

        payload = part.numpy().tobytes()
        what = f"generated-past-eos|{tag}|{p}|{g}|{temp}|{seed + i}"
        data = _cached(model_dir, what, payload, compute, log)
        rows, t = generated_rows(data["hidden"], data["ids"], p, cfg.n)
        hidden.append(data["hidden"].flatten(0, 1)[rows])
        targets.append(t)
        greedy.append(torch.full((len(rows),), temp == 0))
    return torch.cat(hidden), torch.cat(targets), torch.cat(greedy)


def parse_temperatures(text: str) -> list[float]:
    try:
        temps = [float(t) for t in text.split(",")]
    except ValueError:
        temps = []
    if not temps or any(not 0 <= t <= 10 for t in temps):
        raise ValueError(
            f"--gen-temperatures wants a comma list of temperatures >= 0, got {text!r}"
        )
    return temps


def heads_loss(
    heads: CPHeads, hidden: torch.Tensor, targets: torch.Tensor, unembed, balance: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective, mean joint NLL) for hidden [N, d] and targets [N, n]."""
    log_w = heads.log_weights(hidden)
    lp = gather_targets(heads.factor_log_probs(hidden, unembed), targets)
    nll = joint_nll(log_w, lp).mean()
    return nll + balance * load_balance(log_w), nll


@torch.no_grad()
def evaluate(heads, hidden, targets, unembed, batch: int = 256) -> float:
    """Mean joint NLL (nats per position) over all rows of hidden [N, d] / targets [N, n]."""
    total = 0.0
    for i in range(0, hidden.shape[0], batch):
        h = hidden[i : i + batch].float()
        _, nll = heads_loss(heads, h, targets[i : i + batch], unembed, 0.0)
        total += float(nll) * h.shape[0]
    return total / hidden.shape[0]


class _Objective(torch.nn.Module):
    """Everything one optimizer step trains (the heads, with --finetune the body too) behind one
    forward, so that DDP can synchronise its gradients."""

    def __init__(self, heads: CPHeads, body: torch.nn.Module | None, unembed, balance: float):
        super().__init__()
        self.heads, self.body, self.unembed, self.balance = heads, body, unembed, balance

    def forward(
        self, x: torch.Tensor, targets: torch.Tensor, pick: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective, joint NLL): x is hidden states [N, d], or with a body token windows
        [W, L] whose states at the flat indices `pick` get the targets [N, n]."""
        if self.body is None:
            return heads_loss(self.heads, x, targets, self.unembed, self.balance)
        hidden = self.body.model(input_ids=x).last_hidden_state
        logits = self.unembed(hidden[:, :-1]).flatten(0, 1).float()
        lm = F.cross_entropy(logits, x[:, 1:].flatten())
        h = hidden.flatten(0, 1)[pick]
        loss, nll = heads_loss(self.heads, h, targets, self.unembed, self.balance)
        return loss + lm, nll


def train_heads(cfg: HeadsTrainConfig, command: str = "", quiet: bool = False) -> dict:
    """Train, evaluate and save heads to ``cfg.out``; returns the saved config as a dict."""
    from braid.llm import bundled_model
    from braid.model.loader import resolve_model_dir

    if cfg.targets is None:
        cfg = replace(cfg, targets="data" if cfg.finetune else "generated")
    check_config(cfg)
    rt = setup_runtime(cfg.device, "fp32", cfg.threads)  # bf16 only where chosen below
    device, log = rt.device, rt.logger(quiet)
    model_dir = resolve_model_dir(cfg.model) if cfg.model else bundled_model()
    model = load_base(model_dir, device)
    embed = model.get_output_embeddings().weight.detach()  # the shared, frozen unembedding

    def unembed(x: torch.Tensor) -> torch.Tensor:  # exact: evaluation
        return F.linear(x, embed)

    # training logits in bf16 where the hardware has it (about 2x on this CPU); softmax in fp32
    fast_embed = embed.to(torch.bfloat16) if native_bf16(device) else embed

    def unembed_train(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(fast_embed.dtype), fast_embed)

    mc = model.config
    train_ids, val_ids, corpus_meta = token_streams(model_dir, cfg.data)
    context = min(cfg.context, mc.max_position_embeddings)
    tr_starts = window_starts(len(train_ids), cfg.train_tokens, context, cfg.seed)
    va_starts = window_starts(len(val_ids), cfg.val_tokens, context, cfg.seed + 1)
    if cfg.targets == "generated" and cfg.gen_prompt + cfg.gen_tokens > mc.max_position_embeddings:
        raise ValueError(
            f"--gen-prompt + --gen-tokens = {cfg.gen_prompt + cfg.gen_tokens} is more than the "
            f"model's context ({mc.max_position_embeddings})"
        )
    val_greedy = None  # rows the draft tree is fitted on (heads-tree drafts for greedy requests)
    if cfg.targets == "generated":
        val_h, val_t, val_greedy = generated_set(
            model, model_dir, val_ids, cfg.val_tokens, cfg, cfg.seed + 1, "val", log, quiet
        )
    else:
        val_h = cached_hidden(model, model_dir, val_ids, va_starts, context, "val", log)
        if cfg.targets == "greedy":
            val_t, keep = greedy_targets(val_h, unembed, cfg.n)
            val_h = val_h.flatten(0, 1)[keep]
        else:
            val_h = val_h.flatten(0, 1)
            val_t = targets_for(val_ids, va_starts, context, cfg.n).flatten(0, 1)

    hc = HeadsConfig(
        n=cfg.n,
        rank=cfg.rank,
        hidden_size=mc.hidden_size,
        vocab_size=embed.shape[0],
        kind=cfg.kind,
        bottleneck=cfg.bottleneck,
        base_first=cfg.base_first,
    )
    seed_all(cfg.seed)
    heads = CPHeads(hc, seed=cfg.seed).to(device)
    params = [{"params": list(heads.parameters()), "lr": cfg.lr}]
    if cfg.finetune:
        model.requires_grad_(True).train()
        model.get_input_embeddings().requires_grad_(False)
        body = [p for p in model.parameters() if p.requires_grad]
        params.append({"params": body, "lr": cfg.finetune_lr})
        train_h = train_t = None
    elif cfg.targets == "generated":
        train_h, train_t, _ = generated_set(
            model, model_dir, train_ids, cfg.train_tokens, cfg, cfg.seed, "train", log, quiet
        )
    else:
        train_h = cached_hidden(model, model_dir, train_ids, tr_starts, context, "train", log)
        if cfg.targets == "greedy":
            log("computing the model's greedy tokens (self-distillation targets)")
            train_t, keep = greedy_targets(train_h, unembed_train, cfg.n)
            train_h = train_h.flatten(0, 1)[keep]
        else:
            train_h = train_h.flatten(0, 1)
            train_t = targets_for(train_ids, tr_starts, context, cfg.n).flatten(0, 1)
    objective = _Objective(heads, model if cfg.finetune else None, unembed_train, cfg.balance)
    schedule = Schedule(cfg.steps, warmup=max(1, cfg.steps // 20), min_lr_ratio=0.1)
    trainer = Trainer(rt, objective, adamw(params, cfg.lr), schedule, quiet=quiet)

    initial = evaluate(heads, val_h.to(device), val_t.to(device), unembed)
    log(f"initial joint validation NLL {initial:.4f} nats/position")
    gen = torch.Generator().manual_seed(cfg.seed)
    drawn: dict[int, torch.Tensor] = {}

    def micro_loss(m: torch.nn.Module, step: int, shard: int) -> tuple[torch.Tensor, dict]:
        if cfg.finetune:
            x, t, pick = _finetune_batch(train_ids, cfg, context, step, shard)
            loss, nll = m(x.to(device), t.to(device), pick.to(device))
        else:  # every rank draws the whole step's rows from one stream and takes its shard
            if step not in drawn:
                drawn.clear()
                size = cfg.batch_size * rt.world * trainer.grad_accum
                drawn[step] = torch.randint(0, train_h.shape[0], (size,), generator=gen)
            rows = drawn[step][shard * cfg.batch_size : (shard + 1) * cfg.batch_size]
            loss, nll = m(train_h[rows].float().to(device), train_t[rows].to(device))
        return loss, {"joint_nll": nll.item(), "tokens": cfg.batch_size}

    trainer.fit(micro_loss, cfg.steps, stop_on_signal=False)
    history = [r["joint_nll"] for r in trainer.progress["history"]]
    seconds = trainer.progress["train_seconds"]

    out = Path(cfg.out)
    base = {
        "path": str(model_dir),
        "name": model_dir.name,
        "model_type": mc.model_type,
        # which tokenizer the heads' vocabulary means: how shipped heads find the models they fit
        "vocabulary_sha256": vocabulary_sha256(model_dir),
    }
    if cfg.finetune:
        model.eval()
        if rt.main:
            _export(model, model_dir, out / "model")
        base = {**base, "path": str(out / "model"), "name": f"{model_dir.name}+finetuned"}
        embed = model.get_output_embeddings().weight.detach()
        val_h = hidden_states(model, val_ids, va_starts, context).flatten(0, 1)
    heads.eval()
    val = evaluate(heads, val_h.to(device), val_t.to(device), unembed)
    log(f"joint validation NLL {val:.4f} nats/position (initial {initial:.4f})")
    fit = val_greedy if val_greedy is not None and bool(val_greedy.any()) else slice(None)
    ranks = true_ranks(heads, val_h[fit].to(device), val_t[fit].to(device), unembed).cpu()
    hc.tree = [list(p) for p in fit_template(ranks, TREE_NODES)]
    hc.tree_tokens = [
        round(expected_tokens(ranks, hc.tree[:k]), 3) for k in range(1, len(hc.tree) + 1)
    ]
    hc.val_loss = round(val, 4)
    hc.base_model = base
    hc.training = {
        "command": command,
        "initial_val_loss": round(initial, 4),
        "val_positions": int(val_h.shape[0]),
        "train_positions": int(
            train_h.shape[0] if train_h is not None else len(tr_starts) * context
        ),
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "balance": cfg.balance,
        "finetune": cfg.finetune,
        "targets": cfg.targets,
        **({"gen_temperatures": cfg.gen_temperatures} if cfg.targets == "generated" else {}),
        "seconds": round(seconds, 1),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "corpus": corpus_meta.get("name", cfg.data),
        "last_train_nll": round(float(np.mean(history[-20:])), 4),
    }
    if rt.main:
        save_heads(heads.cpu(), out)
    rt.barrier()
    return hc.to_dict()


def check_config(cfg: HeadsTrainConfig) -> None:
    if not 2 <= cfg.n <= MAX_N:
        raise ValueError(f"--n must be in [2, {MAX_N}], got {cfg.n}")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.train_tokens < 1 or cfg.val_tokens < 1:
        raise ValueError("--steps, --batch-size, --train-tokens and --val-tokens must be >= 1")
    if cfg.targets is not None and cfg.targets not in TARGETS:
        raise ValueError(f"--targets must be one of {', '.join(TARGETS)}, got {cfg.targets!r}")
    if cfg.targets not in (None, "data") and cfg.finetune:
        raise ValueError(f"--targets {cfg.targets} needs a frozen model (the targets come from it)")
    parse_temperatures(cfg.gen_temperatures)
    if cfg.gen_prompt < 1 or cfg.gen_tokens <= cfg.n:
        raise ValueError(
            f"--gen-prompt must be >= 1 and --gen-tokens > n ({cfg.n}); got {cfg.gen_prompt}, "
            f"{cfg.gen_tokens}"
        )


def _finetune_batch(
    ids: np.ndarray, cfg: HeadsTrainConfig, context: int, step: int, shard: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh windows [W, L], the flat positions that get heads targets, and their targets
    [batch_size, n]: a pure function of (seed, step, shard)."""
    windows = max(1, cfg.batch_size // 64)
    # shard 0 keeps the stream of the single-process runs made before there were shards
    rng = np.random.default_rng([cfg.seed, step] if shard == 0 else [cfg.seed, step, shard])
    starts = rng.integers(0, len(ids) - context - MAX_N, windows)
    rows = torch.from_numpy(np.stack([ids[s : s + context] for s in starts]).astype(np.int64))
    pick = torch.from_numpy(rng.integers(0, windows * context, cfg.batch_size))
    t = targets_for(ids, starts, context, cfg.n).flatten(0, 1)[pick]
    return rows, t, pick


def _export(model: torch.nn.Module, model_dir: Path, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        with contextlib.suppress(FileNotFoundError, shutil.SameFileError):
            shutil.copyfile(model_dir / name, out / name)


# ---------------------------------------------------------------- command line


_HELP = {
    "out": "output directory for heads.safetensors/json",
    "model": "base model directory (default: the bundled target)",
    "data": "text file or directory (default: CPython stdlib sources)",
    "n": "tokens per hidden state",
    "rank": "CP rank r",
    "kind": "projection per position/expert",
    "bottleneck": "residual block width",
    "base_first": "position 1 reuses the base model's next-token distribution",
    "batch_size": "positions per step",
    "balance": "load-balancing weight",
    "train_tokens": "cached positions",
    "context": "window of the base model",
    "targets": "generated (default; data with --finetune): the model's own continuations of "
    "corpus prompts (see --gen-temperatures), the text decoding verifies against "
    "(self-distillation); data: the corpus text's next n tokens; greedy: the model's own "
    "argmax after each text token",
    "gen_prompt": "generated: prompt tokens each",
    "gen_tokens": "generated: new tokens each",
    "gen_temperatures": "generated: comma list of temperatures the prompts are split among (0 = "
    "greedy; default 0,1: half greedy, half sampled; 0 alone is best for greedy decoding only)",
    "finetune": "train the backbone jointly",
    "threads": "torch threads (0 = default)",
    "device": "auto (cuda > mps > cpu), or a torch device string",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    choices = {"kind": KINDS, "targets": TARGETS}
    flags.add_config_arguments(p, HeadsTrainConfig, _HELP, choices=choices)


def run(args: argparse.Namespace) -> int:
    """Handler of ``braid train-heads``: the process exit code (2 with one line on error)."""

    def body() -> int:
        cfg = flags.config_from_args(HeadsTrainConfig, args)
        command = flags.command_line("train-heads", args)
        saved = train_heads(cfg, command=command, quiet=args.quiet)
        if not args.quiet:
            print(f"wrote {cfg.out}: joint validation NLL {saved['val_loss']:.4f} nats/position")
        return 0

    return flags.run_reporting_errors("train-heads", body)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train-heads",
        help="train CP multi-token heads on a model (needs .[train])",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p
