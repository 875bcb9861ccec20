"""`braid` command line: generate, chat, info, convert, models, bench, train-lm, distill-data,
train-draft, train-heads, make-tasks, curate, train-multiverse.

Errors a user can fix (bad arguments, missing model, bad prompt) exit 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from braid.device import add_device_arg
from braid.errors import BraidError, BraidWarning
from braid.methods.config import DEFAULTS, METHODS, MethodConfig, parse_gamma
from braid.model.loader import WEIGHTS

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage block)
        self.exit(EXIT_USAGE, f"braid: error: {message} (see `{self.prog} --help`)\n")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="a Hugging Face directory, a .gguf file, or a name from `braid models` (default: "
        "SmolLM2-135M-Instruct; with --method multiverse its shipped Multiverse adapter)",
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp16", "fp32"],
        default="auto",
        help="compute dtype (auto: bf16 on a GPU or where the CPU has native bf16, else fp32); an "
        "explicit dtype runs a GGUF file dequantized",
    )
    p.add_argument(
        "--weights",
        choices=list(WEIGHTS),
        default="auto",
        help="how the matrices are kept: auto = a GGUF file's own precision (Q4_0/Q4_1/Q8_0 "
        "integers on int4 kernels, other types bf16) or --dtype for other checkpoints; bf16 / "
        "fp32 = dequantized; int8 / int4 = weight-only, quantized at load (default: auto)",
    )
    p.add_argument(
        "--adapter",
        help="a peft LoRA adapter directory, merged into the weights at load (with its "
        "tokenizer when it has one)",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    add_device_arg(p)


def _add_method_args(p: argparse.ArgumentParser) -> None:
    """--method and its options; defaults are `MethodConfig`'s (one place for all front ends)."""
    p.add_argument(
        "--method",
        default=DEFAULTS.name,
        choices=list(METHODS),
        help="ar: one token per pass; spec / block: a draft model proposes --gamma tokens, "
        "token-level / block verification keeps them (exact); mtad / mtad-tree: the draft "
        "beam-samples, a joint-ratio test against --tau keeps a prefix (lossy; equal to ar "
        "at temperature 0); heads / heads-block: CP heads on the model's own hidden state draft "
        "n - 1 tokens (exact); heads-tree: for greedy requests the heads draft a tree of "
        "--gamma candidate tokens, verified in one pass (sampled ones run heads); "
        "ngram / ngram-block: prompt lookup drafts what followed the latest match of the "
        "text's last 3..1 tokens, token-level / block verification (exact, any model); "
        "multiverse: a Multiverse model forks its own parallel "
        "paths and the engine decodes them side by side (default: %(default)s)",
    )
    p.add_argument(
        "--gamma",
        type=parse_gamma,
        default=DEFAULTS.gamma,
        help="'auto': each request's draft length (0 included) is chosen every step from "
        "measured pass times and its acceptance, for the most tokens/s of the batch; or a "
        "fixed number of drafted tokens per target pass (heads-tree: nodes of the draft tree) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--beams",
        type=int,
        default=DEFAULTS.beams,
        help="mtad: beams of the draft (default: %(default)s)",
    )
    p.add_argument(
        "--tau",
        type=float,
        default=DEFAULTS.tau,
        help="mtad: joint acceptance threshold (default: %(default)s)",
    )
    p.add_argument(
        "--max-paths",
        type=int,
        default=DEFAULTS.max_paths,
        help="multiverse: larger forks decode sequentially (default: %(default)s)",
    )
    p.add_argument(
        "--max-depth",
        type=int,
        default=DEFAULTS.max_depth,
        help="multiverse: deeper nesting decodes sequentially (default: %(default)s)",
    )


def _method_config(args) -> MethodConfig:
    """The flags of `_add_method_args` as one validated config (bad values exit 2)."""
    return MethodConfig(
        args.method,
        gamma=args.gamma,
        beams=args.beams,
        tau=args.tau,
        max_paths=args.max_paths,
        max_depth=args.max_depth,
    )


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
    _add_method_args(p)
    p.add_argument(
        "--draft",
        help="draft model for spec / block / mtad / mtad-tree, sharing the model's tokenizer "
        "(default: code-draft-2m for code-23m; other models need one)",
    )
    p.add_argument(
        "--heads",
        help="CP heads directory for --method heads / heads-block / heads-tree (default: the "
        "shipped heads for code-23m; other models need theirs); heads draft n - 1 tokens from "
        "each target pass",
    )
    p.add_argument(
        "--max-total-tokens",
        type=int,
        help="multiverse: bound on all tokens across paths (--max-tokens bounds the critical path)",
    )
    _add_sampling_args(p)
    p.add_argument("--chat", action="store_true", help="each prompt is one user turn of a chat")
    p.add_argument("--system", help="with --chat: the system prompt")
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


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Sampling flags; unset ones take the model's generation_config, else braid's fallbacks
    (`braid.sampling.FALLBACKS`): one source of defaults for the API and the CLI."""
    from braid.sampling import FALLBACKS

    def model_default(name: str) -> str:
        return f"(default: the model's generation_config, else {FALLBACKS[name]})"

    p.add_argument("--max-tokens", type=int, help="new tokens " + model_default("max_tokens"))
    p.add_argument("--temperature", type=float, help="0 = greedy " + model_default("temperature"))
    p.add_argument("--top-p", type=float, help=model_default("top_p"))
    p.add_argument("--top-k", type=int, help="0 disables " + model_default("top_k"))
    p.add_argument("--min-p", type=float, help=model_default("min_p"))
    p.add_argument(
        "--repetition-penalty", type=float, help=">1 discourages repeats " + model_default(
            "repetition_penalty"
        )
    )  # fmt: skip
    p.add_argument("--presence-penalty", type=float, default=0.0, help="(default: %(default)s)")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="(default: %(default)s)")
    p.add_argument("--n", type=int, default=1, help="samples per prompt (default: %(default)s)")
    p.add_argument("--seed", type=int, help="same seed, same output")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence")


def _sampling_params(args):
    from braid import SamplingParams

    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        n=args.n,
        seed=args.seed,
        stop=args.stop,
        ignore_eos=args.ignore_eos,
        max_total_tokens=getattr(args, "max_total_tokens", None),
    )


def _load(args, method: str):
    """The LLM the flags name; multiverse without --model takes the default model with its
    shipped Multiverse adapter."""
    from braid import LLM
    from braid.model.registry import MULTIVERSE_MODEL, bundled_adapter, bundled_model

    model, adapter = args.model, getattr(args, "adapter", None)
    if model is None and adapter is None and method == "multiverse":
        adapter = bundled_adapter()
        if adapter is None:  # a checkout without the asset: the small bundled Multiverse model
            model = bundled_model(MULTIVERSE_MODEL)
    return LLM(
        model,
        dtype=args.dtype,
        weights=args.weights,
        threads=args.threads,
        device=args.device,
        max_batch=args.max_batch,
        draft=args.draft,
        heads=args.heads,
        adapter=adapter,
    )


def _generate(args) -> int:
    prompts = _read_prompts(args)
    method = _method_config(args)  # checked before the model loads
    params = _sampling_params(args)
    if args.system and not args.chat:
        raise BraidError("--system needs --chat")
    llm = _load(args, args.method)
    if args.chat:
        system = [{"role": "system", "content": args.system}] if args.system else []
        conversations = [[*system, {"role": "user", "content": p}] for p in prompts]
        prompts = [llm.chat_prompt(c) for c in conversations]
        params = llm.chat_params(params)
    multiverse = args.method == "multiverse"
    one = len(prompts) == 1 and params.n == 1
    if one and not args.json and not args.no_stream and not multiverse:
        for delta in llm.stream(prompts[0], params, method=method):
            print(delta, end="", flush=True)
        print()
        out = llm.last_stream_output
        if args.stats:
            print(json.dumps(_stats(out.outputs[0], 0)), file=sys.stderr)
        return 0
    progress = len(prompts) > 1 or params.n > 1
    outputs = llm.generate(prompts, params, method=method, use_tqdm=progress)
    if multiverse:
        return _print_multiverse(outputs, args)
    texts = [p if isinstance(p, str) else llm.tokenizer.decode(p, special=True) for p in prompts]
    for i, (out, prompt) in enumerate(zip(outputs, texts)):
        for sample in out.outputs:
            if args.json:
                record = {"index": i, "sample": sample.index, "prompt": prompt, "text": sample.text}
                record.update(token_ids=sample.token_ids, finish_reason=sample.finish_reason)
                record["stats"] = sample.stats.as_dict()
                print(json.dumps(record))
                continue
            if not one:  # as vLLM's examples: each prompt and its output clearly apart
                label = f"[{i}]" if out.outputs[1:] == [] else f"[{i}.{sample.index}]"
                print(f"{label} prompt: {prompt!r}" if sample.index == 0 else label)
            print(sample.text)
            if not one:
                print()
            if args.stats:
                print(json.dumps(_stats(sample, i)), file=sys.stderr)
    return 0


def _stats(sample, index: int) -> dict:
    """One --stats line: which output, why it ended, and what the method did."""
    record = {"index": index, "sample": sample.index, "finish_reason": sample.finish_reason}
    return record | sample.stats.as_dict()


def _print_multiverse(outputs, args) -> int:
    """The structure readable at a glance (colour on a terminal), then what parallelism bought."""
    from braid.multiverse.display import render, summary, tree

    colour = sys.stdout.isatty()
    for i, out in enumerate(outputs):
        for sample in out.outputs:
            if args.json:
                record = {"index": i, "sample": sample.index, "prompt": out.prompt}
                record.update(text=sample.text, tree=tree(sample.text))
                record.update(finish_reason=sample.finish_reason, stats=sample.stats.as_dict())
                print(json.dumps(record))
                continue
            if len(outputs) > 1 or len(out.outputs) > 1:
                print(f"[{i}.{sample.index}] prompt: {out.prompt!r}")
            print(render(sample.text, colour))
            print(summary(sample), file=sys.stderr)
    return 0


def _add_chat(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a model (interactive, streaming, multi-turn)",
        description="An interactive conversation rendered with the model's chat template. "
        "/reset starts over, /exit or Ctrl-D quits, Ctrl-C stops the current answer. Reads "
        "one user turn per line when standard input is not a terminal.",
    )
    _model_args(p)
    p.add_argument("--system", help="system prompt (kept across /reset)")
    _add_method_args(p)
    p.add_argument("--draft", help="draft model for the draft methods")
    p.add_argument("--heads", help="CP heads for the heads methods")
    _add_sampling_args(p)
    p.add_argument("--stats", action="store_true", help="print each answer's stats to stderr")
    p.set_defaults(func=_chat, max_batch=1)


def _chat(args) -> int:
    from braid.chat_cli import run_chat

    method = _method_config(args)
    params = _sampling_params(args)
    if params.n != 1:
        raise BraidError("braid chat answers with one sample; use generate --chat --n N")
    llm = _load(args, args.method)
    llm.chat_template()  # a model without a template fails here, before the first question
    return run_chat(llm, params, method, system=args.system, stats=args.stats)


def _add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="describe a model (directory or .gguf)",
        description="Architecture, size, weights and card of a model, read from its files "
        "without loading it.",
    )
    p.add_argument("--model", help="model path or bundled name (default: the default model)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_info)


def _info(args) -> int:
    from braid.model.info import describe, format_info
    from braid.model.registry import find_model

    info = describe(find_model(args.model))
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a GGUF file into a Hugging Face model directory",
        description="Dequantize a GGUF file into a Hugging Face directory (model.safetensors, "
        "config.json, generation_config.json, tokenizer.json, tokenizer_config.json with the "
        "chat template) that braid and transformers load. Nothing is written unless the whole "
        "directory is.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("gguf", help="the .gguf file")
    p.add_argument("out", help="the directory to create (must not exist, or be empty)")
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="dtype of the written weights (fp32 holds every dequantized value exactly)",
    )
    p.set_defaults(func=_convert)


def _convert(args) -> int:
    from braid.model.gguf_cache import convert
    from braid.model.loader import parse_dtype

    path = Path(args.gguf)
    if not path.is_file():
        raise BraidError(f"{path}: no such file")
    out = convert(path, args.out, parse_dtype(args.dtype))
    print(f"wrote {out}")
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the models braid names without a path",
        description="The default model and the small models bundled with braid (fast test "
        "fixtures and fully offline use): where each comes from, its licence and size. Any of "
        "these names works as --model NAME.",
    )
    p.add_argument("--json", action="store_true", help="the full model cards as JSON")
    p.set_defaults(func=_models)


def _models(args) -> int:
    from braid.model.registry import model_cards

    cards = model_cards()
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    print(
        f"{'model':<17} {'name':<22} {'params':>7} {'quality':>15} {'MB':>6} {'licence':<10} path"
    )
    for c in cards:
        params = f"{c['parameters'] / 1e6:.1f}M" if "parameters" in c else "?"
        print(
            f"{c['model']:<17} {c.get('name', '?'):<22} {params:>7} {_quality(c):>15} "
            f"{c.get('weights_mb', '?'):>6} {c.get('license', '?'):<10} {c['path']}"
        )
    print("(braid models --json for the full cards, with sources)")
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
    _add_chat(sub)
    _add_info(sub)
    _add_convert(sub)
    _add_models(sub)
    # these modules import their heavy dependencies (transformers) only when run
    from braid.bench.cli import add_parser as add_bench
    from braid.heads.train import add_parser as add_train_heads
    from braid.multiverse.data_cli import add_parsers as add_multiverse_data
    from braid.multiverse.train import add_parser as add_train_multiverse
    from braid.serve.cli import add_parser as add_serve
    from braid.training.distill import add_parser as add_distill_data
    from braid.training.train_draft import add_parser as add_train_draft
    from braid.training.train_lm import add_parser as add_train_lm

    add_bench(sub)
    add_train_lm(sub)
    add_distill_data(sub)
    add_train_draft(sub)
    add_train_heads(sub)
    add_multiverse_data(sub)
    add_train_multiverse(sub)
    add_serve(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, BraidWarning):
        print(f"braid: warning: {message}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for reports: the exact command
    warnings.showwarning = _one_line_warning
    try:
        return args.func(args)
    except BraidError as e:
        print(f"braid: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
