"""`braid bench`: command-line front end of the benchmark runner."""

from __future__ import annotations

import argparse
import shlex
from functools import partial
from pathlib import Path
from typing import Any

from braid.device import add_device_arg
from braid.errors import BraidError
from braid.methods.config import DEFAULTS, parse_gamma


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from braid.bench.models import CONFIGS

    p = subparsers.add_parser(
        "bench",
        help="time braid's methods against transformers on the same weights",
        description="Generation of --new-tokens tokens per prompt (greedy unless --temperature); "
        "every contender runs the same weights in this process, alternating, median of --runs. "
        "Reports tokens/s, the ratios to transformers and to ar, tokens per pass, acceptance, "
        "the fraction of the memory-bandwidth roofline and energy where a counter is readable; "
        "--quality adds perplexity under the target and the distance from ar (untimed).",
    )
    p.add_argument("--methods", default="ar", help="comma-separated braid methods (default: ar)")
    p.add_argument(
        "--peer",
        choices=["transformers", "transformers-assisted", "transformers-lookup", "none"],
        default="transformers",
        help="transformers: its generate(); transformers-assisted: generate(assistant_"
        "model=the draft) with --gamma drafted tokens (batch 1 only); transformers-lookup: "
        "generate(prompt_lookup_num_tokens=--gamma, 10 under auto) (batch 1 only); none",
    )
    p.add_argument(
        "--gamma",
        type=parse_gamma,
        default=DEFAULTS.gamma,
        help="drafted tokens per target pass, or 'auto' (every drafting method picks each "
        "request's length per step from measured pass times and its acceptance; the assisted "
        "peer runs transformers' 'heuristic' schedule) (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        help="model directory (repeatable; default: the bundled target when no --config)",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        help=f"random-weight config: {', '.join(CONFIGS)}, or 'bundled' (repeatable)",
    )
    p.add_argument("--draft", help="draft model for the draft methods (default: bundled draft)")
    p.add_argument(
        "--heads", help="CP heads for the heads methods (default: the bundled target's own)"
    )
    p.add_argument("--batch", type=_int_list, default=[1, 8], help="batch sizes, e.g. 1,8")
    p.add_argument(
        "--prompts",
        default="random",
        help="random (token ids, --prompt-len long), specbench (first turns of "
        "Spec-Bench, one table row per subtask), val (--prompt-len tokens before seeded cut "
        "points in held-out validation text of --val-data, by default the bundled models' "
        "corpus) or a file (one prompt per line, or .jsonl with 'prompt')",
    )
    p.add_argument(
        "--val-data",
        help="--prompts val: the training corpus (a text file or directory, as train-lm "
        "--data) whose validation split gives the prompts; default: the bundled models' corpus",
    )
    p.add_argument(
        "--prompt-count",
        type=int,
        default=8,
        help="prompts per subtask or file (text prompts only)",
    )
    p.add_argument("--specbench", help="path of Spec-Bench's question.jsonl (default: shared data)")
    p.add_argument(
        "--chat",
        action="store_true",
        help="text prompts: each one user turn under the model's chat template (Spec-Bench's "
        "protocol for chat models); raise --prompt-len so no prompt is cut",
    )
    p.add_argument(
        "--prompt-len",
        type=int,
        default=64,
        help="random prompts: their length; text prompts: keep the last N tokens",
    )
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0: greedy (default); > 0: plain sampling, seeded per prompt",
    )
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    add_device_arg(p)
    p.add_argument(
        "--cache-dir",
        default=str(Path.home() / ".cache" / "braid" / "bench"),
        help="where random-weight checkpoints are written once",
    )
    p.add_argument(
        "--quality",
        action="store_true",
        help="also measure, untimed: perplexity of each method's outputs under the target, and "
        "the total variation of its first tokens' distribution from ar's (with ar vs ar as floor)",
    )
    p.add_argument(
        "--quality-seeds", type=int, default=256, help="--quality: samples per prompt and method"
    )
    p.add_argument(
        "--quality-prompts", type=int, default=4, help="--quality: prompts per group for the TV"
    )
    p.add_argument(
        "--quality-tokens", type=int, default=2, help="--quality: leading tokens compared (TV)"
    )
    p.add_argument("--out", help="write the table here (.md) and the data beside it (.json)")
    p.add_argument(
        "--plot",
        action="store_true",
        help="with --out: also draw the speedup over ar per method and prompt group (.png)",
    )
    p.set_defaults(func=_bench)
    return p


def _bench(args) -> int:
    from braid.bench import prompts, report, runner
    from braid.bench.models import CONFIGS, random_checkpoint
    from braid.methods import METHODS
    from braid.model.registry import CODE_MODEL, bundled_model

    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise BraidError(f"unknown method(s) {unknown}; available: {', '.join(METHODS)}")
    if args.temperature < 0:
        raise BraidError(f"--temperature must be >= 0, got {args.temperature}")
    if args.runs < 1 or args.warmup < 0 or args.new_tokens < 1 or args.prompt_len < 1:
        raise BraidError("--runs, --new-tokens and --prompt-len must be >= 1, --warmup >= 0")
    if args.quality_seeds < 2 or args.quality_prompts < 1 or args.quality_tokens < 1:
        raise BraidError("--quality-seeds must be >= 2, --quality-prompts/-tokens >= 1")
    if args.plot and not args.out:
        raise BraidError("--plot needs --out FILE.md (the png is written beside it)")
    models: list[tuple[str, Path]] = [(Path(m).name, Path(m)) for m in args.model]
    for name in args.config:
        if name == "bundled":
            models.append(("bundled-target", bundled_model(CODE_MODEL)))
        elif name in CONFIGS:
            models.append((name, random_checkpoint(name, Path(args.cache_dir) / name)))
        else:
            raise BraidError(f"unknown --config {name!r}; choose {', '.join(CONFIGS)} or bundled")
    if not models:  # the small bundled code model: fast, and it has a draft and heads
        models.append(("bundled-target", bundled_model(CODE_MODEL)))
    texts = None
    if args.prompts == "specbench":
        texts = prompts.specbench(args.specbench, args.prompt_count)
    elif args.prompts == "val":
        if args.val_data and not Path(args.val_data).exists():
            raise BraidError(f"--val-data {args.val_data}: no such file or directory")
        texts = partial(
            prompts.validation,
            count=args.prompt_count,
            prompt_len=args.prompt_len,
            new_tokens=args.new_tokens,
            data=Path(args.val_data) if args.val_data else None,
        )
    elif args.prompts != "random":
        if not Path(args.prompts).is_file():
            raise BraidError(f"--prompts: {args.prompts!r} is not random, specbench, val or a file")
        texts = prompts.text_file(Path(args.prompts), args.prompt_count)
    result = runner.run(
        models,
        methods,
        peer=args.peer,
        gamma=args.gamma,
        texts=texts,
        temperature=args.temperature,
        batches=tuple(args.batch),
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        runs=args.runs,
        warmup=args.warmup,
        dtype=args.dtype,
        threads=args.threads,
        chat=args.chat,
        device=args.device,
        draft=Path(args.draft) if args.draft else None,
        heads=Path(args.heads) if args.heads else None,
        quality=(
            runner.Quality(args.quality_prompts, args.quality_seeds, args.quality_tokens)
            if args.quality
            else None
        ),
    )
    command = "braid " + " ".join(shlex.quote(a) for a in args.argv)
    print(report.markdown(result, command))
    if args.out:
        report.write(result, Path(args.out), command)
        if args.plot:
            from braid.bench.plot import plot_speedup

            print(f"plot: {plot_speedup(result, Path(args.out).with_suffix('.png'))}")
    return 0
