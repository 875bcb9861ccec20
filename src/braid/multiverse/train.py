"""``braid train-multiverse``: supervised fine-tuning with Multiverse Attention.

Fine-tunes a Hugging Face-format causal LM (``transformers`` + torch) on prompt/solution pairs so
that it writes Multiverse structure that braid's ``method="multiverse"`` engine can fork:

1. adds the twelve tags to the tokenizer and the model (``braid.multiverse.tags.add_tags``);
2. encodes every record twice: its sequential form and its Multiverse form (see *Format*);
3. trains with :mod:`braid.training.runtime` (AdamW, warmup + cosine, gradient accumulation and
   clipping, bf16 autocast where supported, checkpoints and ``--resume``); every batch gets the
   4-D additive attention mask and the position ids of ``braid.multiverse.attention`` (sibling
   paths invisible to each other, paths restarting at position(``</Goal>``) + 1), so training
   sees exactly what the engine computes;
4. the curriculum: each example of a batch is in Multiverse form with probability
   ``mv_start + (1 - mv_start) * min(1, step / (curriculum * steps))`` and sequential otherwise,
   i.e. all-sequential to all-Multiverse over the first ``curriculum`` fraction of the steps, as
   in the paper (``--curriculum 0`` = Multiverse from the start);
5. exports ``OUT``: config, bf16 safetensors, tokenizer with the tags, generation config, a model
   card (``README.md``) and ``braid_card.json``. A checkpoint goes to ``OUT/checkpoint``.

Format (the evaluation must use the same): the prompt text as given (the task family's ends with
a newline), then the response ``<Think> ... </Think>`` followed by what comes after it in the
record (the task family's ``Answer: N``), then the tokenizer's eos. Prompt and response are
tokenized separately and concatenated, exactly as the engine tokenizes a text prompt and the
model continues it. The loss covers the response tokens (eos included), never the prompt. In
Multiverse-masked examples the path labels the engine forces after ``<Path>`` (``2:``, ``2.1:``)
carry no loss (``--no-mask-forced`` keeps them): under the mask every sibling ``<Path>`` sees the
same context, so the label is unpredictable there and the engine never samples it.

``--causal-fraction F`` trains that fraction of the Multiverse-form examples with the ordinary
causal mask and sequential positions (their labels keep the loss), so the same model also writes
the structure when decoded sequentially (``method="ar"``); 0 disables it.

Data: ``--data F.jsonl`` with fields ``prompt``, ``multiverse`` and optionally ``sequential`` (or
``text``) - what ``braid make-tasks`` and ``braid curate`` write - or ``--tasks N --seed S`` to
generate problems of the task family (``braid.multiverse.tasks``) in memory.

Devices: CUDA, then MPS, then CPU (``--device`` overrides); under ``torchrun`` or ``accelerate
launch`` the runtime joins the process group and wraps the model in DDP. ``--batch-size`` is per
device and micro-batch. The loss is the mean over the trained tokens of each micro-batch, and a
step averages its micro-batches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from braid.errors import InvalidRequestError, ModelLoadError
from braid.multiverse import tags as T
from braid.multiverse.attention import multiverse_attention_inputs
from braid.multiverse.grammar import to_sequential
from braid.training import flags
from braid.training.lm_card import export_model
from braid.training.runtime import (
    Trainer,
    count_parameters,
    load_checkpoint,
    machine,
    resumed_config,
    seed_all,
    setup_runtime,
)

IGNORE = -100


@dataclass
class MultiverseTrainConfig:
    """Every setting of a run; saved in the checkpoint and the model card."""

    model: str = ""  # Hugging Face-format directory to fine-tune
    out: str = "runs/multiverse"
    name: str = ""  # defaults to the out directory's name
    data: str | None = None  # JSONL with prompt / multiverse / sequential
    tasks: int = 0  # or: generate this many task-family problems
    task_seed: int = 0
    knobs: str = ""  # task-family knobs as JSON, e.g. '{"max_parts": 4}'
    steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    curriculum: float = 0.5  # Multiverse fraction reaches 1 after this fraction of the steps
    mv_start: float = 0.0  # Multiverse fraction at step 0
    causal_fraction: float = 0.0  # of Multiverse examples, trained with the plain causal mask
    mask_forced: bool = True  # no loss on the path labels the engine forces
    max_len: int = 0  # drop examples longer than this (0 = the model's context)
    seed: int = 0
    threads: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | bf16 | fp32 (autocast; master weights stay fp32)
    log_every: int = 10
    save_every: int = 0  # checkpoint every N steps (0 = only at the end)
    lora_rank: int = 0  # > 0: train a peft LoRA adapter of this rank instead of every weight
    lora_alpha: float = 0.0  # LoRA scale numerator (0 = 2 x rank)


# ---------------------------------------------------------------- data


def load_records(cfg: MultiverseTrainConfig) -> list[dict]:
    """Records with prompt / multiverse (/ sequential) from --data or the task family."""
    if cfg.data:
        path = Path(cfg.data)
        if not path.exists():
            raise InvalidRequestError(f"--data {path}: not found; pass a JSONL file")
        records = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidRequestError(f"--data {path}, line {n}: not JSON ({e})") from None
            if not isinstance(rec, dict) or not all(
                isinstance(rec.get(k), str) for k in ("prompt", "multiverse")
            ):
                raise InvalidRequestError(
                    f"--data {path}, line {n}: needs string fields 'prompt' and 'multiverse' "
                    "(what braid make-tasks and braid curate write)"
                )
            records.append(rec)
        if not records:
            raise InvalidRequestError(f"--data {path}: no records")
        return records
    if cfg.tasks <= 0:
        raise InvalidRequestError("give --data F.jsonl or --tasks N (task-family problems)")
    from braid.multiverse.tasks import Knobs, make_tasks

    try:
        knobs = Knobs(**json.loads(cfg.knobs)) if cfg.knobs else Knobs()
    except (json.JSONDecodeError, TypeError) as e:
        raise InvalidRequestError(f"--knobs: {e}; pass a JSON object of Knobs fields") from None
    return [t.as_dict() for t in make_tasks(cfg.tasks, cfg.task_seed, knobs)]


def responses(record: dict) -> tuple[str, str]:
    """(sequential response, Multiverse response), both ``<Think> ... </Think>`` + the tail.

    The Multiverse text gets a ``<Think>`` wrapper if it has none. The sequential text is the
    record's ``sequential`` (or ``text``) field, or ``to_sequential`` of the Multiverse text; if
    it has no ``<Think>``, it is wrapped, its ending is dropped when it equals the Multiverse
    text's tail (the part after ``</Think>``, e.g. ``Answer: N``) and that tail follows.
    """
    mv = record["multiverse"].strip()
    if T.THINK not in mv:
        mv = f"{T.THINK}\n{mv}\n{T.THINK_END}"
    tail = mv.rsplit(T.THINK_END, 1)[1].strip() if T.THINK_END in mv else ""
    seq = record.get("sequential") or record.get("text") or to_sequential(mv)
    seq = seq.strip()
    if T.THINK not in seq:
        if tail and seq.endswith(tail):
            seq = seq[: -len(tail)].strip()
        seq = f"{T.THINK}\n{seq}\n{T.THINK_END}" + (f"\n{tail}" if tail else "")
    return seq + "\n", mv + "\n"


def encode_example(
    tokenizer: Any, prompt: str, response: str, eos_id: int, mask_forced: bool = False
) -> tuple[list[int], list[int]]:
    """(ids, labels): ids = prompt + response + eos; labels[j] = ids[j] where token j is
    trained (response and eos), IGNORE elsewhere. With `mask_forced`, the label tokens after
    each ``<Path>`` up to and including the first one holding ':' are IGNORE too."""
    p = tokenizer.encode(prompt, add_special_tokens=False)
    r = tokenizer.encode(response, add_special_tokens=False)
    return _with_labels(tokenizer, p, r, eos_id, mask_forced)


def _with_labels(
    tokenizer: Any, p: list[int], r: list[int], eos_id: int, mask_forced: bool
) -> tuple[list[int], list[int]]:
    r = list(r) + [eos_id]
    labels = [IGNORE] * len(p) + r
    if mask_forced:
        path_id = tokenizer.convert_tokens_to_ids(T.PATH)
        pieces = tokenizer.convert_ids_to_tokens(r)
        forced = False
        for j, (tid, piece) in enumerate(zip(r, pieces)):
            if tid == path_id:
                forced = True
            elif forced:
                labels[len(p) + j] = IGNORE
                forced = ":" not in piece
    return list(p) + r, labels


def multiverse_fraction(step: int, cfg: MultiverseTrainConfig) -> float:
    """The curriculum: mv_start rising linearly to 1 over the first `curriculum` of the steps."""
    ramp = cfg.curriculum * cfg.steps
    if ramp <= 0:
        return 1.0
    return cfg.mv_start + (1.0 - cfg.mv_start) * min(1.0, step / ramp)


@dataclass
class Example:
    seq: tuple[list[int], list[int]]
    mv: tuple[list[int], list[int]]  # labels with the forced path labels masked (if enabled)
    mv_causal: tuple[list[int], list[int]]  # labels of every response token


def encode_records(
    tokenizer: Any, records: list[dict], eos_id: int, cfg: MultiverseTrainConfig, max_len: int
) -> tuple[list[Example], int]:
    """Encoded examples and how many were dropped for exceeding `max_len` tokens."""
    pairs = [responses(rec) for rec in records]

    def enc(texts: list[str]) -> list[list[int]]:  # batched: the fast tokenizer's threads
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    prompts = enc([rec["prompt"] for rec in records])
    seqs, mvs = enc([s for s, _ in pairs]), enc([m for _, m in pairs])
    out, dropped = [], 0
    for p, s, m in zip(prompts, seqs, mvs):
        e = Example(
            _with_labels(tokenizer, p, s, eos_id, False),
            _with_labels(tokenizer, p, m, eos_id, cfg.mask_forced),
            _with_labels(tokenizer, p, m, eos_id, False),
        )
        if max(len(e.seq[0]), len(e.mv[0])) > max_len:
            dropped += 1
            continue
        out.append(e)
    return out, dropped


def causal_inputs(attention_mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Plain causal position ids and 4-D additive mask of a padded batch (padding as in
    `multiverse_attention_inputs`: invisible keys; a padded query sees itself)."""
    real = attention_mask.bool()
    positions = (real.long().cumsum(1) - 1).clamp(min=0) * real
    T_ = real.shape[1]
    visible = torch.ones(T_, T_, dtype=torch.bool).tril()[None] & real[:, None, :]
    eye = torch.eye(T_, dtype=torch.bool)[None] & ~real[:, :, None]
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(
        ~(visible | eye), torch.finfo(dtype).min
    )
    return positions, mask[:, None]


def collate(
    rows: list[tuple[list[int], list[int]]],
    causal: list[bool],
    tags: dict[str, int],
    pad_id: int,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, labels, position_ids and the 4-D attention mask of a batch;
    rows flagged `causal` get the plain causal mask, the others Multiverse Attention."""
    T_ = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T_), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T_), IGNORE, dtype=torch.long)
    real = torch.zeros(len(rows), T_, dtype=torch.long)
    for b, (i, lab) in enumerate(rows):
        ids[b, : len(i)] = torch.tensor(i)
        labels[b, : len(lab)] = torch.tensor(lab)
        real[b, : len(i)] = 1
    positions, mask = multiverse_attention_inputs(ids, tags, real, dtype)
    flags = torch.tensor(causal, dtype=torch.bool)
    if flags.any():
        cpos, cmask = causal_inputs(real[flags], dtype)
        positions[flags], mask[flags] = cpos, cmask
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask}


def token_losses(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token next-token cross entropy [B, T-1] in fp32 (0 where the label is IGNORE):
    entry j is the loss of predicting token j + 1."""
    out = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=batch["attention_mask"],
    )
    logits = out.logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    loss = F.cross_entropy(
        logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE, reduction="none"
    )
    return loss.view(target.shape)


def batch_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean loss over the trained tokens of the batch."""
    count = (batch["labels"][:, 1:] != IGNORE).sum().clamp(min=1)
    return token_losses(model, batch).sum() / count


def sample_batch(
    examples: list[Example], step: int, cfg: MultiverseTrainConfig, shard: int
) -> tuple[list[tuple[list[int], list[int]]], list[bool], int]:
    """The rows of one micro-batch, which are causal, and how many are Multiverse: a pure
    function of (seed, step, shard), so runs are reproducible and resumable, and shards (ranks,
    accumulated micro-batches) draw different rows."""
    rng = np.random.default_rng([cfg.seed, step, shard])
    idx = rng.integers(0, len(examples), size=cfg.batch_size)
    mv = rng.random(cfg.batch_size) < multiverse_fraction(step, cfg)
    causal_mv = rng.random(cfg.batch_size) < cfg.causal_fraction
    rows, causal = [], []
    for i, m, c in zip(idx, mv, causal_mv):
        e = examples[int(i)]
        if not m:
            rows.append(e.seq)
            causal.append(True)
        elif c:
            rows.append(e.mv_causal)
            causal.append(True)
        else:
            rows.append(e.mv)
            causal.append(False)
    return rows, causal, int(mv.sum())


# ---------------------------------------------------------------- model


def load_for_training(model_dir: str) -> tuple[Any, Any, dict[str, int], int]:
    """(model fp32, tokenizer, tag ids, eos id) with the tags added to both."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    if not (path / "config.json").exists():
        raise ModelLoadError(f"--model {path}: no config.json; pass a Hugging Face model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation="sdpa"
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"--model {path}: cannot load ({e})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"--model {path}: braid needs a fast tokenizer (tokenizer.json)")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ModelLoadError(f"--model {path}: the tokenizer has no eos token")
    tags = T.add_tags(tokenizer, model)
    return model, tokenizer, tags, eos_id


# ---------------------------------------------------------------- the run


RESUME_OVERRIDABLE = frozenset({"steps", "threads", "device", "save_every", "log_every"})


def _check(cfg: MultiverseTrainConfig) -> None:
    if not cfg.model:
        raise InvalidRequestError("--model DIR is required (the model to fine-tune)")
    for name in ("curriculum", "mv_start", "causal_fraction"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise InvalidRequestError(f"--{name.replace('_', '-')} must be in [0, 1]")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise InvalidRequestError("--steps, --batch-size and --grad-accum must be >= 1")
    if cfg.lora_rank < 0 or cfg.lora_alpha < 0:
        raise InvalidRequestError("--lora-rank and --lora-alpha must be >= 0")


def train(
    cfg: MultiverseTrainConfig,
    command: str = "",
    quiet: bool = False,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
) -> dict:
    """Fine-tune and export; returns the card (empty on ranks other than 0). On `resume` the
    settings come from ``OUT/checkpoint`` except `overrides` (keys of RESUME_OVERRIDABLE)."""
    out = Path(cfg.out)
    state = load_checkpoint(out / "checkpoint") if resume else None
    if state is not None:
        cfg = resumed_config(MultiverseTrainConfig, state, overrides or {}, RESUME_OVERRIDABLE)
        cfg.out = str(out)
    _check(cfg)
    cfg.name = cfg.name or out.name
    rt = setup_runtime(cfg.device, cfg.precision, cfg.threads)
    log = rt.logger(quiet)

    records = load_records(cfg)
    seed_all(cfg.seed)
    model, tokenizer, tags, eos_id = load_for_training(cfg.model)
    if cfg.lora_rank:
        model = with_lora(model, cfg, sorted(tags.values()))
    context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 1 << 30
    max_len = min(cfg.max_len or context, context)
    examples, dropped = encode_records(tokenizer, records, eos_id, cfg, max_len)
    if not examples:
        raise InvalidRequestError(f"every record is longer than {max_len} tokens")
    model.to(rt.device).train()
    n_params = count_parameters(model)
    trainer = Trainer.from_config(rt, model, cfg, out, quiet)
    if state is not None:
        trainer.restore(state)
        log(f"resumed from {out / 'checkpoint'} at step {trainer.step}")
    mask_dtype = rt.autocast_dtype or torch.float32
    lengths = [len(e.mv[0]) for e in examples]
    log(
        f"{cfg.name}: {n_params:,} parameters, {len(examples):,} examples ({dropped} over "
        f"{max_len} tokens dropped), median {int(np.median(lengths))} tokens, device "
        f"{rt.device} x{rt.world}, autocast {rt.autocast_dtype}, threads {torch.get_num_threads()}"
    )

    def micro_loss(m: torch.nn.Module, step: int, shard: int) -> tuple[torch.Tensor, dict]:
        rows, causal, n_mv = sample_batch(examples, step, cfg, shard)
        batch = collate(rows, causal, tags, eos_id, mask_dtype)
        batch = {k: v.to(rt.device) for k, v in batch.items()}
        padded = int(batch["attention_mask"].shape[-1]) * len(rows)
        return batch_loss(m, batch), {"mv_fraction": n_mv / len(rows), "tokens": padded}

    if rt.main:
        out.mkdir(parents=True, exist_ok=True)
    checkpoint = (out / "checkpoint", asdict(cfg))
    trainer.fit(micro_loss, cfg.steps, checkpoint=checkpoint, save_every=cfg.save_every)

    card: dict = {}
    if rt.main:
        trainer.save(*checkpoint)
        tokenizer.save_pretrained(out)
        _portable_tokenizer_config(out / "tokenizer_config.json")
        if cfg.lora_rank:  # the adapter alone: braid merges it at load (LLM(adapter=OUT))
            model.save_pretrained(out, save_embedding_layers=False)
        else:
            export_model(model, out, out, eos_id)
        _greedy_generation_config(out, eos_id, max_len)
        history = trainer.progress["history"]
        last = history[-min(50, len(history)) :]
        card = {
            "name": cfg.name,
            "role": "multiverse",
            "license": "apache-2.0",
            "base_model": cfg.model,
            "parameters": n_params,
            "examples": len(examples),
            "examples_dropped": dropped,
            "median_tokens": int(np.median(lengths)),
            "final_train_loss": round(sum(r["loss"] for r in last) / len(last), 4),
            "first_train_loss": round(history[0]["loss"], 4),
            "steps_done": trainer.step,  # fewer than config.steps when stopped early (Ctrl-C)
            "train_seconds": round(trainer.progress["train_seconds"], 1),
            "tokens_seen": trainer.progress["tokens_seen"],
            "device": str(rt.device),
            "world_size": rt.world,
            "precision": str(rt.autocast_dtype or "fp32").replace("torch.", ""),
            "machine": machine(),
            "config": asdict(cfg),
            "command": command,
        }
        write_card(out, card)
    rt.barrier()
    return card


def with_lora(model: Any, cfg: MultiverseTrainConfig, new_tokens: list[int]) -> Any:
    """`model` wrapped by peft: LoRA on every linear layer of the decoder, and the tags' rows
    of the embedding (and of a head tied to it) trained as peft trainable tokens, so the
    adapter stores those rows only, never the whole vocabulary."""
    try:
        import peft
    except ImportError:
        raise InvalidRequestError(
            "--lora-rank needs peft: pip install 'braid-llm[train]'"
        ) from None
    linears = sorted(
        {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
         if isinstance(m, torch.nn.Linear) and ".layers." in name}
    )  # fmt: skip
    config = peft.LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
        target_modules=linears,
        trainable_token_indices={"embed_tokens": new_tokens},
        lora_dropout=0.0,
    )
    return peft.get_peft_model(model, config)


def _greedy_generation_config(out: Path, eos_id: int, max_len: int) -> None:
    """Structured answers are decoded greedily (export_model writes sampling defaults)."""
    from transformers import GenerationConfig

    GenerationConfig(
        eos_token_id=eos_id, pad_token_id=eos_id, do_sample=False, max_new_tokens=max_len
    ).save_pretrained(out)


def _portable_tokenizer_config(path: Path) -> None:
    """transformers 5 writes its own class name; older versions know the fast tokenizer class."""
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n")


def write_card(out: Path, card: dict) -> None:
    """``braid_card.json`` and a ``README.md`` model card; held-out results, if any, come from
    ``card["evaluation"]`` (the benchmark adds them)."""
    (out / "braid_card.json").write_text(json.dumps(card, indent=2) + "\n")
    c = card["config"]
    data = c["data"] or f"{c['tasks']} task-family problems, seed {c['task_seed']}, knobs " + (
        c["knobs"] or "default"
    )
    lines = [
        "---",
        f"license: {card['license']}",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [braid, llama, multiverse]",
        "---",
        "",
        f"# braid `{card['name']}` (Multiverse model)",
        "",
        (
            f"A rank-{c['lora_rank']} LoRA adapter (peft; braid merges it at load with "
            f"`--adapter` / `LLM(model, adapter=DIR)`) for the {card['parameters'] / 1e6:.1f}M-"
            "parameter base model, trained by "
            if c.get("lora_rank")
            else f"A {card['parameters'] / 1e6:.2f}M-parameter causal LM fine-tuned by "
        ),
        "`braid train-multiverse` with Multiverse Attention to write Multiverse structure "
        "(`<Parallel>`, `<Goal>` with numbered `<Outline>`s, one `<Path>` each, `<Conclusion>`) "
        "for braid's parallelisable arithmetic task family, so that "
        '`method="multiverse"` forks real parallel paths. A demonstration model, not a '
        "general reasoner.",
        "",
        "## Prompt format",
        "",
        "The problem text (ending with a newline); the model answers `<Think> ... </Think>` then "
        "`Answer: N` and eos. Use temperature 0.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {card['base_model']} |",
        f"| data | {data} |",
        f"| examples (median tokens) | {card['examples']:,} ({card['median_tokens']}) |",
        f"| steps x batch (x accumulation) | {card.get('steps_done', c['steps'])} x "
        f"{c['batch_size']} (x {c['grad_accum']}) |",
        f"| lr / warmup / schedule | {c['lr']} / {c['warmup']} / cosine to {c['min_lr_ratio']}x |",
        f"| curriculum | Multiverse fraction {c['mv_start']} -> 1 over the first "
        f"{c['curriculum']:.0%} of steps; causal-mask fraction {c['causal_fraction']} |",
        f"| train loss first -> last 50 steps | {card['first_train_loss']} -> "
        f"{card['final_train_loss']} |",
        f"| time | {card['train_seconds'] / 60:.1f} min on {card['machine']}, "
        f"{card['device']}, {card['precision']} |",
        f"| tokens seen (padded) | {card['tokens_seen']:,} |",
        "",
    ]
    stages = card.get("stages")
    if stages:  # a run continued from an earlier one's output: every command, in order
        lines += ["Trained in stages, each starting from the previous one's output:", ""]
        for i, st in enumerate(stages, 1):
            lines.append(
                f"{i}. `{st['command']}` ({st['steps']} steps, {st['train_seconds'] / 60:.1f} min,"
                f" final train loss {st['final_train_loss']})"
            )
    else:
        lines.append(f"Command: `{card['command']}`")
    if card.get("note"):
        lines += ["", f"Note: {card['note']}."]
    ev = card.get("evaluation")
    if ev:
        lines += ["", "## Held-out results", "", ev.get("markdown", "")]
    (out / "README.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- command line

_HELP = {
    "model": "Hugging Face model directory to fine-tune (required)",
    "out": "output model directory",
    "data": "JSONL with prompt, multiverse (and sequential) fields",
    "tasks": "generate N task-family problems instead of --data",
    "task_seed": "seed of the generated problems",
    "knobs": "task-family knobs as a JSON object, e.g. '{\"max_parts\": 4}'",
    "curriculum": "fraction of the steps over which the Multiverse share rises to 1",
    "mv_start": "Multiverse share of the examples at step 0",
    "causal_fraction": "share of Multiverse examples trained with the plain causal mask",
    "mask_forced": "no loss on the path labels the engine forces",
    "max_len": "drop examples longer than this many tokens (0 = model context)",
    "batch_size": "examples per micro-batch per device",
    "grad_accum": "micro-batches accumulated per optimizer step",
    "threads": "torch CPU threads (0 = default)",
    "device": "auto (cuda > mps > cpu) or a torch device",
    "precision": "auto (bf16 autocast where supported), bf16 or fp32",
    "save_every": "checkpoint every N steps (0 = at the end)",
    "lora_rank": "LoRA rank through peft (0 = full fine-tuning); the tags' rows train too",
    "lora_alpha": "LoRA alpha (0 = 2 x rank)",
}


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint (settings come from the checkpoint; --steps, "
        "--threads, --device, --save-every, --log-every may change)",
    )
    flags.add_config_arguments(p, MultiverseTrainConfig, _HELP)


def config_from_args(args: argparse.Namespace) -> MultiverseTrainConfig:
    """Defaults < ``--config`` JSON < explicit flags."""
    return flags.config_from_args(MultiverseTrainConfig, args)


def run(args: argparse.Namespace) -> int:
    """Handler of ``braid train-multiverse``: the process exit code (2 with one line on error)."""

    def body() -> int:
        cfg = config_from_args(args)
        resume = bool(getattr(args, "resume", False))
        overrides = flags.explicit_flags(MultiverseTrainConfig, args) if resume else {}
        command = flags.command_line("train-multiverse", args)
        card = train(cfg, command, args.quiet, resume=resume, overrides=overrides)
        if card and not args.quiet:
            print(f"wrote {cfg.out}: final train loss {card['final_train_loss']:.4f}")
        return 0

    return flags.run_reporting_errors("train-multiverse", body)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train-multiverse`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "train-multiverse",
        help="fine-tune a model with Multiverse Attention to write parallel structure",
        description=__doc__.split("\n\n")[0],
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m braid.multiverse.train", description=__doc__.split("\n\n")[0]
    )
    _add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
