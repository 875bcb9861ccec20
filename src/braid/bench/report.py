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
    ("joules_per_token", "J/tok", "{:.3g}"),
]
# shown only when measured (`--quality`): see braid.bench.quality
QUALITY_COLUMNS = [
    ("perplexity", "ppl (target)", "{:.2f}"),
    ("tv_vs_ar", "TV first tokens vs ar", "{:.3f}"),
]


def _cell(value, fmt: str, missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return fmt.format(value)


def markdown(result: dict, command: str = "") -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads; torch {m['torch']}, "
        f"Python {m['python']}; {m['date']}.",
        f"Memory bandwidth (torch.sum over 1 GiB): {result['bandwidth_gb_s']:.1f} GB/s.",
        f"Settings: prompt {s['prompt_len']} tokens"
        f"{' (at most), each one user turn under the chat template' if s.get('chat') else ''}, "
        f"{s['new_tokens']} new tokens, "
        f"{'greedy' if not s.get('temperature') else 'temperature ' + str(s['temperature'])}, "
        f"{s['dtype']}, median of {s['runs']} runs after {s['warmup']} warm-up.",
    ]
    if s.get("energy"):
        lines.append(f"Energy (J/tok): {s['energy']}.")
    columns = list(COLUMNS)
    if s.get("quality"):
        qs = s["quality"]
        columns += QUALITY_COLUMNS
        lines.append(
            "Quality (untimed): ppl = perplexity of each method's outputs under the target "
            "(temperature 1, no truncation). TV = total variation between the empirical "
            f"distributions of the first {qs['k']} tokens under the method and under ar, "
            f"{qs['seeds']} seeded samples each at temperature 1 on {qs['prompts']} prompts per "
            "group (mean over prompts); in the ar row: ar vs ar with other seeds, the noise floor."
        )
    if command:
        lines.append(f"Command: `{command}`")
    lines += [
        "",
        "| " + " | ".join(h for _, h, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in result["rows"]:
        cells = [
            _cell(row.get(k), f, "n/a" if k == "joules_per_token" else "–") for k, _, f in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path, command: str = "") -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(result, command))
    out.with_suffix(".json").write_text(json.dumps({**result, "command": command}, indent=2))
