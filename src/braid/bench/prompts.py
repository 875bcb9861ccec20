"""Prompt sets for benchmarks: random token ids, Spec-Bench first turns, or a text file."""

from __future__ import annotations

import json
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


def encode(groups: dict[str, list[str]], tokenizer: Tokenizer, max_len: int) -> dict:
    """Token ids per group, each prompt cut to its last `max_len` tokens."""
    return {g: [tokenizer.encode(t)[-max_len:] for t in texts] for g, texts in groups.items()}
