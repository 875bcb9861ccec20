"""`braid make-tasks` (the parallelisable task family) and `braid curate` (the Curator)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from braid.errors import BraidError, InvalidRequestError


def add_parsers(subparsers: Any) -> None:
    """Register `make-tasks` and `curate` on an argparse subparsers object."""
    _add_make_tasks(subparsers)
    _add_curate(subparsers)


KNOB_FLAGS = {  # flag -> help; each defaults to the chosen --family's value
    "min_parts": "fewest sub-problems",
    "max_parts": "most sub-problems",
    "nest_rate": "chance a part splits",
    "max_depth": "levels of blocks (1 = no nesting)",
    "max_splits": "split parts per problem",
    "min_nested": "fewest parts of a split",
    "max_nested": "most parts of a split",
    "max_operand": "operands of + and -",
    "max_factor": "operands of *",
    "min_steps": "fewest dependent steps per part",
    "max_steps": "most dependent steps per part (1: one operation)",
    "max_value": "bound of a chain's values",
}


def _families() -> dict:
    from braid.multiverse.tasks import LONG_PATHS, Knobs

    return {"short": Knobs(), "long": LONG_PATHS}


def _add_make_tasks(sub: Any) -> None:
    from braid.multiverse.tasks import COMBINES, Knobs

    p = sub.add_parser(
        "make-tasks",
        help="write parallelisable arithmetic problems with sequential and Multiverse solutions",
        description="Write problems of 2-8 independent sub-problems combined at the end, as JSONL "
        "with fields prompt, answer, sequential, multiverse, meta. Problem i depends only on "
        "(--seed, i, knobs): use different seeds for training and held-out sets.",
    )
    p.add_argument("--count", type=int, required=True, help="number of problems")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output JSONL file ('-' for standard output)")
    p.add_argument(
        "--family",
        choices=["short", "long"],
        default="short",
        help="short: one operation per part (the bundled model's data); long: parts of 5-8 "
        "dependent steps behind short outlines, about 2x parallel (default: %(default)s)",
    )
    types = {f.name: f.type for f in dataclasses.fields(Knobs)}
    for name, text in KNOB_FLAGS.items():
        kind = float if types[name] in (float, "float") else int
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=f"{text} (family default)")
    p.add_argument("--ops", help="operations of the leaves, from '+-*' (family default)")
    p.add_argument("--combines", help=f"comma-separated, from {','.join(COMBINES)}")
    p.set_defaults(func=_make_tasks)


def _make_tasks(args: argparse.Namespace) -> int:
    from braid.multiverse.tasks import make_tasks

    given = {name: getattr(args, name) for name in KNOB_FLAGS if getattr(args, name) is not None}
    if args.ops is not None:
        given["ops"] = args.ops
    if args.combines is not None:
        given["combines"] = tuple(c.strip() for c in args.combines.split(",") if c.strip())
    knobs = dataclasses.replace(_families()[args.family], **given).validate()
    if args.count < 0:
        raise InvalidRequestError(f"--count must be >= 0, got {args.count}")
    try:
        f = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    except OSError as e:
        raise BraidError(f"cannot write --out: {e}") from None
    try:
        for task in make_tasks(args.count, args.seed, knobs):
            f.write(json.dumps(task.as_dict()) + "\n")
    finally:
        if f is not sys.stdout:
            f.close()
    return 0


def _add_curate(sub: Any) -> None:
    from braid.multiverse.curator.checks import DEFAULT_THRESHOLD

    p = sub.add_parser(
        "curate",
        help="turn sequential reasoning (JSONL) into Multiverse form with an LLM",
        description="Run the Multiverse Curator's five stages on each record of --input through "
        "an OpenAI-compatible chat endpoint. Records that fail the content or grammar check "
        "after --max-retries go to --rejects with the reason. Ids already in --output or "
        "--rejects are skipped, so an interrupted run resumes.",
    )
    p.add_argument("--input", required=True, help="JSONL with 'sequential' or 'text' (and 'id')")
    p.add_argument("--output", required=True, help="JSONL to append curated records to")
    p.add_argument("--rejects", help="JSONL of rejected ids and reasons (default OUTPUT.rejects)")
    p.add_argument(
        "--endpoint", help="base URL up to /v1 (env BRAID_CURATOR_BASE_URL or OPENAI_BASE_URL)"
    )
    p.add_argument("--model", help="model name (env BRAID_CURATOR_MODEL or OPENAI_MODEL)")
    p.add_argument("--api-key", help="(env BRAID_CURATOR_API_KEY or OPENAI_API_KEY)")
    p.add_argument("--text-field", help="field holding the text (default: sequential, text)")
    p.add_argument("--concurrency", type=int, default=4, help="records in flight at once")
    p.add_argument("--max-retries", type=int, default=2, help="re-asks per failed check/request")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="max edit distance")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_curate)


def _curate(args: argparse.Namespace) -> int:
    try:
        import httpx  # noqa: F401
        import rapidfuzz  # noqa: F401
    except ImportError as e:
        raise BraidError(f"braid curate needs {e.name}: pip install 'braid-llm[curate]'") from None
    from braid.multiverse.curator import CurateOptions, EndpointConfig, curate_file

    config = EndpointConfig.resolve(
        args.endpoint,
        args.model,
        args.api_key,
        temperature=args.temperature,
        timeout_s=args.timeout,
    )
    options = CurateOptions(
        threshold=args.threshold,
        max_retries=args.max_retries,
        concurrency=args.concurrency,
        text_field=args.text_field,
        progress=not args.no_progress,
    )
    summary = curate_file(args.input, args.output, config, options, args.rejects)
    print(json.dumps(summary.as_dict()), file=sys.stderr)
    return 0
