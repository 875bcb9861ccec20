"""Prompt sets for benchmarks: random token ids, Spec-Bench first turns, held-out validation text
of the bundled models' corpus, or a text file."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from braid.errors import BraidError
from braid.model.tokenizer import Tokenizer

# Spec-Bench's prompt file lives in the workspace's shared data, beside the repository
SPECBENCH = Path(__file__).resolve().parents[3].parent / "shared/data/specbench/question.jsonl"
MT_BENCH = {
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
}


def specbench(path: Path | None, per_category: int) -> dict[str, list[str]]:
    """First turns of Spec-Bench, grouped by subtask (the 8 MT-Bench categories form one)."""
    path = Path(path) if path else SPECBENCH
    if not path.exists():
        raise BraidError(f"Spec-Bench prompts not found at {path}; pass --prompts-file")
    groups: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            q = json.loads(line)
            task = "multi_turn" if q["category"] in MT_BENCH else q["category"]
            groups.setdefault(task, []).append(q["turns"][0])
    return {task: texts[:per_category] for task, texts in groups.items()}


def text_file(path: Path, count: int) -> dict[str, list[str]]:
    """One prompt per line (or JSONL with 'prompt'), all in one group named after the file."""
    lines = [x for x in Path(path).read_text().splitlines() if x.strip()]
    if path.suffix == ".jsonl":
        lines = [json.loads(x)["prompt"] for x in lines]
    return {Path(path).stem: lines[:count]}


def validation(
    tokenizer: Tokenizer,
    count: int,
    prompt_len: int,
    new_tokens: int,
    data: Path | None = None,
    seed: int = 0,
) -> dict[str, list[list[int]]]:
    """`count` prompts cut from the validation split of a training corpus, as token ids.

    `data` is a corpus as `braid train-lm --data` takes it; None is the bundled models' corpus
    (the standard library of this Python, split by file hash, so these files were never trained
    on). A seeded generator picks documents with at least prompt_len + new_tokens tokens and a
    cut point in each; the prompt is the prompt_len tokens before the cut, so the reference
    continuation is real held-out text. Documents are reused (other cuts) only when too few.
    """
    from braid.training.corpus import load_corpus

    need = prompt_len + new_tokens
    docs = [ids for ids in (tokenizer.encode(d) for d in load_corpus(data).val) if len(ids) >= need]
    if not docs:
        raise BraidError(
            f"no validation document has {need} tokens (--prompt-len + --new-tokens); "
            "use shorter prompts or fewer new tokens"
        )
    rng = random.Random(seed)
    order = rng.sample(range(len(docs)), len(docs))
    prompts = []
    for i in range(count):
        ids = docs[order[i % len(docs)]]
        cut = rng.randint(prompt_len, len(ids) - new_tokens)
        prompts.append(ids[cut - prompt_len : cut])
    return {"validation": prompts}


def chat_turns(groups: dict[str, list], render: Callable[[list[dict]], list[int]]) -> dict:
    """Each text prompt as one user turn rendered by `render` (`LLM.chat_prompt`: the model's
    chat template, generation prompt added); token-id prompts pass through."""
    return {
        g: [render([{"role": "user", "content": t}]) if isinstance(t, str) else t for t in texts]
        for g, texts in groups.items()
    }


def encode(groups: dict[str, list], tokenizer: Tokenizer, max_len: int) -> dict:
    """Token ids per group, each prompt cut to its last `max_len` tokens (ids pass through)."""
    return {
        g: [(t if isinstance(t, list) else tokenizer.encode(t))[-max_len:] for t in texts]
        for g, texts in groups.items()
    }
