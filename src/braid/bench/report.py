"""Benchmark results as a markdown table (printed and committed) and JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

COLUMNS = [
    ("model", "model", "{}"),
    ("batch", "batch", "{}"),
    ("prompts", "prompts", "{}"),
    ("contender", "contender", "{}"),
    ("tokens_per_s", "tok/s", "{:.1f}"),
    ("vs_peer", "× transformers", "{:.2f}"),
    ("vs_ar", "× ar", "{:.2f}"),
    ("tokens_per_pass", "tok/pass", "{:.2f}"),
    ("acceptance", "accept", "{:.2f}"),
    ("roofline", "roofline (bf16 bytes)", "{:.0%}"),
    ("roofline_braid", "roofline (bytes read)", "{:.0%}"),
    ("same_tokens", "same tokens as peer", "{}"),
]


def _cell(value, fmt: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return fmt.format(value)


def markdown(result: dict, command: str = "") -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads; torch {m['torch']}, "
        f"Python {m['python']}; {m['date']}.",
        f"Memory bandwidth (torch.sum over 1 GiB): {result['bandwidth_gb_s']:.1f} GB/s.",
        f"Settings: prompt {s['prompt_len']} tokens, {s['new_tokens']} new tokens, "
        f"{'greedy' if not s.get('temperature') else 'temperature ' + str(s['temperature'])}, "
        f"{s['dtype']}, median of {s['runs']} runs after {s['warmup']} warm-up.",
    ]
    if command:
        lines.append(f"Command: `{command}`")
    lines += [
        "",
        "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in result["rows"]:
        lines.append("| " + " | ".join(_cell(row[k], f) for k, _, f in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path, command: str = "") -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(result, command))
    out.with_suffix(".json").write_text(json.dumps({**result, "command": command}, indent=2))
