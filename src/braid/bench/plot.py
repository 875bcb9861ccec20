"""Speedup over `ar` per method and prompt group, one panel per batch size (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path


def speedups(result: dict) -> dict[int, dict[str, dict[str, float]]]:
    """{batch: {group: {contender: speedup over ar in the same run}}}, plus a geometric-mean
    group "all" when there are several groups."""
    out: dict[int, dict[str, dict[str, float]]] = {}
    multi_model = len({r["model"] for r in result["rows"]}) > 1
    for r in result["rows"]:
        if r["contender"] == "ar" or r.get("vs_ar") is None or math.isnan(r["vs_ar"]):
            continue
        group = f"{r['model']}/{r['prompts']}" if multi_model else r["prompts"]
        out.setdefault(r["batch"], {}).setdefault(group, {})[r["contender"]] = r["vs_ar"]
    for groups in out.values():
        if len(groups) > 1:
            contenders = {c for g in groups.values() for c in g}
            groups["all (geomean)"] = {
                c: math.exp(
                    sum(math.log(g[c]) for g in groups.values() if c in g)
                    / sum(c in g for g in groups.values())
                )
                for c in sorted(contenders)
            }
    return out


def plot_speedup(result: dict, out: Path) -> Path:
    """Grouped bars: x = prompt group, one bar per contender, a dashed line at 1 (= ar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = speedups(result)
    if not data:
        raise ValueError("no speedups over ar to plot: run `ar` beside the other methods")
    batches = sorted(data)
    seen = {c for b in data.values() for g in b.values() for c in g}
    order = [m for m in result["settings"].get("methods", []) if m in seen]
    contenders = order + sorted(seen - set(order))  # methods as run, then the peer
    fig, axes = plt.subplots(
        1, len(batches), figsize=(max(8.0, 5.5 * len(batches)), 4.6), squeeze=False, sharey=True
    )
    width = 0.8 / len(contenders)
    for ax, batch in zip(axes[0], batches):
        groups = list(data[batch])
        for i, c in enumerate(contenders):
            xs = [j + (i - (len(contenders) - 1) / 2) * width for j in range(len(groups))]
            ys = [data[batch][g].get(c, float("nan")) for g in groups]
            ax.bar(xs, ys, width, label=c)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
        ax.set_title(f"batch {batch}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("speedup over ar (same run)")
    axes[0][-1].legend(fontsize="small")
    s = result["settings"]
    temp = s.get("temperature") or 0
    models = ", ".join(sorted({r["model"] for r in result["rows"]}))
    fig.suptitle(
        f"{models}: {'greedy (temperature 0)' if not temp else f'temperature {temp}'}\n"
        f"gamma {s.get('gamma')}, {s.get('new_tokens')} new tokens, {s.get('dtype')}",
        fontsize="medium",
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
