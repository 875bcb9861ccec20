"""The exported model directory of ``braid train-lm``: bf16 Hugging Face weights with the
tokenizer and a generation config, and the model card (``README.md`` + ``braid_card.json``)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from braid.training.corpus import EOS_TOKEN
from braid.training.runtime import Runtime, Trainer, machine
from braid.training.tokenizer import TOKENIZER_FILES

if TYPE_CHECKING:  # train_lm imports this module
    from braid.training.train_lm import TrainConfig


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


def build_card(
    cfg: TrainConfig,
    rt: Runtime,
    trainer: Trainer,
    n_params: int,
    vocab: int,
    val_loss: float,
    n_eval: int,
    corpus_meta: dict,
) -> dict:
    """The card of a finished run (``write_card`` renders it; the caller adds the command)."""
    progress, step = trainer.progress, trainer.step
    return {
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
            "machine": machine(),
            "config": asdict(cfg),
        },
    }
