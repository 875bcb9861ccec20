"""`braid` command line: generate, info, models, bench, train-lm, train-heads, make-tasks,
curate, train-multiverse.

Errors a user can fix (bad arguments, missing model, bad prompt) exit 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from braid.errors import BraidError
from braid.methods import METHODS

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage block)
        self.exit(EXIT_USAGE, f"braid: error: {message} (see `{self.prog} --help`)\n")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="Hugging Face-format model directory (default: the bundled target; with "
        "--method multiverse the bundled Multiverse model)",
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp16", "fp32"],
        default="auto",
        help="weight dtype (auto: bf16 where the CPU has native bf16, else fp32)",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")


def parse_gamma(text: str) -> int | str:
    """--gamma: an integer, or 'auto' for adaptive drafting."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from prompts",
        description="Generate from one or more prompts: --prompt (repeatable), --prompts-file "
        "(one prompt per line, or JSONL with a 'prompt' field), or standard input.",
    )
    _model_args(p)
    p.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    p.add_argument("--prompts-file", help="file with one prompt per line, or .jsonl with 'prompt'")
    p.add_argument(
        "--method",
        default="ar",
        choices=list(METHODS),
        help="ar: one token per pass; spec / block: a draft model proposes --gamma tokens, "
        "token-level / block verification keeps them (exact); mtad / mtad-tree: the draft "
        "beam-samples, a joint-ratio test against --tau keeps a prefix (lossy; equal to ar "
        "at temperature 0); heads / heads-block: CP heads on the model's own hidden state draft "
        "n - 1 tokens (exact); heads-tree: for greedy requests the heads draft a tree of "
        "--gamma candidate tokens, verified in one pass (sampled ones run heads); "
        "multiverse: a Multiverse model forks its own parallel "
        "paths and the engine decodes them side by side",
    )
    p.add_argument("--draft", help="draft model directory (default: the bundled draft)")
    p.add_argument(
        "--heads",
        help="CP heads directory for --method heads / heads-block / heads-tree (default: the "
        "bundled heads "
        "of the bundled target); heads draft n - 1 tokens from each target pass",
    )
    p.add_argument(
        "--gamma",
        type=parse_gamma,
        default=4,
        help="drafted tokens per target pass (heads-tree: nodes of the draft tree), or 'auto' "
        "(spec, block, mtad, mtad-tree): adapted per request from its acceptance",
    )
    p.add_argument("--beams", type=int, default=4, help="mtad: beams of the draft")
    p.add_argument("--tau", type=float, default=0.5, help="mtad: joint acceptance threshold")
    p.add_argument(
        "--max-paths", type=int, default=16, help="multiverse: larger forks decode sequentially"
    )
    p.add_argument(
        "--max-depth", type=int, default=4, help="multiverse: deeper nesting decodes sequentially"
    )
    p.add_argument(
        "--max-total-tokens",
        type=int,
        help="multiverse: bound on all tokens across paths (--max-tokens bounds the critical path)",
    )
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 disables (default)")
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, help="same seed, same output")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded at once")
    p.add_argument("--json", action="store_true", help="one JSON object per output")
    p.add_argument("--stats", action="store_true", help="print per-output stats to stderr")
    p.add_argument(
        "--no-stream", action="store_true", help="print a single prompt's text at the end"
    )
    p.set_defaults(func=_generate)


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                lines = [line.rstrip("\n") for line in f if line.strip()]
        except OSError as e:
            raise BraidError(f"cannot read --prompts-file: {e}") from None
        if args.prompts_file.endswith(".jsonl"):
            try:
                lines = [json.loads(line)["prompt"] for line in lines]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise BraidError(f"{args.prompts_file}: each line needs a JSON 'prompt'") from None
        prompts += lines
    if not prompts and not sys.stdin.isatty():
        text = sys.stdin.read()
        if text.strip():
            prompts.append(text.rstrip("\n"))
    if not prompts:
        raise BraidError("no prompt given: use --prompt TEXT, --prompts-file FILE or stdin")
    return prompts


def _generate(args) -> int:
    from braid import LLM, SamplingParams

    prompts = _read_prompts(args)
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        seed=args.seed,
        stop=args.stop,
        ignore_eos=args.ignore_eos,
        max_total_tokens=args.max_total_tokens,
    )
    model = args.model
    if model is None and args.method == "multiverse":  # the bundled model that writes structure
        from braid.llm import bundled_model

        model = bundled_model("multiverse")
    llm = LLM(
        model,
        dtype=args.dtype,
        threads=args.threads,
        max_batch=args.max_batch,
        draft=args.draft,
        heads=args.heads,
    )
    multiverse = args.method == "multiverse"
    if len(prompts) == 1 and not args.json and not args.no_stream and not multiverse:
        stream = llm.stream(
            prompts[0], params, method=args.method, gamma=args.gamma, beams=args.beams, tau=args.tau
        )
        for delta in stream:
            print(delta, end="", flush=True)
        print()
        if args.stats:
            print(json.dumps(llm.last_stream_output.stats.as_dict()), file=sys.stderr)
        return 0
    outputs = llm.generate(
        prompts,
        params,
        method=args.method,
        use_tqdm=len(prompts) > 1,
        gamma=args.gamma,
        beams=args.beams,
        tau=args.tau,
        max_paths=args.max_paths,
        max_depth=args.max_depth,
    )
    if multiverse:
        return _print_multiverse(outputs, args)
    for out in outputs:
        if args.json:
            print(
                json.dumps(
                    {
                        "prompt": out.prompt,
                        "text": out.text,
                        "token_ids": out.token_ids,
                        "finish_reason": out.finish_reason,
                        "stats": out.stats.as_dict(),
                    }
                )
            )
        else:
            print(out.text)
        if args.stats and not args.json:
            print(json.dumps(out.stats.as_dict()), file=sys.stderr)
    return 0


def _print_multiverse(outputs, args) -> int:
    """The structure readable at a glance (colour on a terminal), then what parallelism bought."""
    from braid.multiverse.display import render, summary, tree

    colour = sys.stdout.isatty()
    for out in outputs:
        if args.json:
            record = {"prompt": out.prompt, "text": out.text, "tree": tree(out.text)}
            record.update(finish_reason=out.finish_reason, stats=out.stats.as_dict())
            print(json.dumps(record))
            continue
        print(render(out.text, colour))
        print(summary(out), file=sys.stderr)
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="describe a model directory")
    p.add_argument("--model", help="model directory (default: bundled target)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_info)


def _info(args) -> int:
    from braid.llm import bundled_model
    from braid.model.info import describe

    info = describe(args.model if args.model else bundled_model())
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the models bundled with braid")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_models)


def _models(args) -> int:
    from braid.llm import ASSETS

    found = sorted(d for d in ASSETS.glob("*") if (d / "config.json").exists())
    if not found:
        raise BraidError(f"no bundled models installed under {ASSETS}")
    cards = []
    for d in found:
        card_file = d / "braid_card.json"
        card = json.loads(card_file.read_text()) if card_file.exists() else {}
        size = sum(f.stat().st_size for f in d.glob("*.safetensors"))
        cards.append({"model": d.name, "path": str(d), "weights_mb": round(size / 1e6, 1), **card})
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    print(f"{'model':<10} {'name':<18} {'params':>8} {'quality':>16} {'MB':>6}  path")
    for c in cards:
        params = f"{c['parameters'] / 1e6:.1f}M" if "parameters" in c else "?"
        print(
            f"{c['model']:<10} {c.get('name', '?'):<18} {params:>8} {_quality(c):>16} "
            f"{c['weights_mb']:>6}  {c['path']}"
        )
    print("(braid models --json for the full model cards)")
    return 0


def _quality(card: dict) -> str:
    """A language model's validation perplexity, or a Multiverse model's held-out validity."""
    if "val_ppl" in card:
        return f"val ppl {card['val_ppl']}"
    mv = card.get("evaluation", {}).get("quality", {}).get("multiverse")
    return f"valid {mv['validity']:.1%}" if mv else "?"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="braid", description="Faster LLM generation: several tokens per pass.")
    from braid import __version__

    parser.add_argument("--version", action="version", version=f"braid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_generate(sub)
    _add_info(sub)
    _add_models(sub)
    # these modules import their heavy dependencies (transformers) only when run
    from braid.bench.cli import add_parser as add_bench
    from braid.heads.train import add_parser as add_train_heads
    from braid.multiverse.data_cli import add_parsers as add_multiverse_data
    from braid.multiverse.train import add_parser as add_train_multiverse
    from braid.training.train_lm import add_parser as add_train_lm

    add_bench(sub)
    add_train_lm(sub)
    add_train_heads(sub)
    add_multiverse_data(sub)
    add_train_multiverse(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for reports: the exact command
    try:
        return args.func(args)
    except BraidError as e:
        print(f"braid: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
