"""Time braid's methods and the `transformers` peer side by side on the same weights.

Every timed call generates `new_tokens` tokens per prompt (eos ignored), so all contenders do
the same work. Calls alternate between contenders within each run, after warm-up, and each
result is the median over runs. Quality measures (`quality`) run after the timed calls of a
prompt group and are never timed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from braid.bench import quality as q
from braid.bench.energy import EnergyMeter
from braid.bench.machine import describe, memory_bandwidth
from braid.bench.models import streamed_weight_bytes
from braid.bench.prompts import chat_turns, encode
from braid.device import resolve_device
from braid.llm import LLM
from braid.methods import METHODS
from braid.methods.config import MethodConfig
from braid.model.loader import resolve_model_dir
from braid.model.registry import find_model
from braid.model.tokenizer import Tokenizer
from braid.sampling import SamplingParams

# prompt groups: texts or token ids per group, or a function of the model's tokenizer giving them
Texts = dict[str, list] | Callable[[Tokenizer], dict[str, list]]


@dataclass
class Quality:
    """What `--quality` measures: see braid.bench.quality."""

    prompts: int = 4  # prompts per group for the distribution distance
    seeds: int = 256  # samples per prompt and method
    k: int = 2  # leading tokens whose joint distribution is compared
    batch: int = 8  # requests at a time while sampling (outputs do not depend on it)
    # (model, group) -> {method: (perplexity, tv)}: seeded outputs are the same at every batch
    measured: dict = field(default_factory=dict, repr=False)


@dataclass
class Row:
    model: str
    batch: int
    contender: str  # a braid method, or the peer's name
    tokens_per_s: float
    prompts: str = "random"  # the prompt set (a Spec-Bench subtask, a file, or random ids)
    tokens_per_pass: float = float("nan")
    acceptance: float = float("nan")
    vs_peer: float = float("nan")
    vs_ar: float = float("nan")
    roofline: float = float("nan")  # streamed bf16 weight bytes x passes/s / bandwidth
    roofline_braid: float = float("nan")  # same with the bytes braid's kernels actually read
    same_tokens: str = ""
    joules_per_token: float = float("nan")  # median over runs; NaN where no counter is readable
    perplexity: float = float("nan")  # of the outputs under the target (--quality)
    tv_vs_ar: float = float("nan")  # first-tokens TV from ar; for ar, its noise floor (--quality)
    runs: list[float] = field(default_factory=list)
    tokens: int = 0  # generated per timed call
    drafted: int = 0  # draft tokens proposed per timed call


def overall_rows(rows: list[Row]) -> list[Row]:
    """One "overall" row per contender over several prompt groups: every group's tokens over
    every group's (median) seconds, i.e. what running all the prompts back to back gives."""
    out: list[Row] = []
    for contender in dict.fromkeys(r.contender for r in rows):
        mine = [r for r in rows if r.contender == contender]
        tokens = sum(r.tokens for r in mine)
        tps = tokens / sum(r.tokens / r.tokens_per_s for r in mine)
        row = Row(mine[0].model, mine[0].batch, contender, tps, prompts="overall", tokens=tokens)
        if all(r.tokens_per_pass == r.tokens_per_pass for r in mine):  # no NaN
            row.tokens_per_pass = tokens / sum(r.tokens / r.tokens_per_pass for r in mine)
        row.drafted = sum(r.drafted for r in mine)
        if row.drafted:
            row.acceptance = sum(r.acceptance * r.drafted for r in mine if r.drafted) / row.drafted
        out.append(row)
    ar = next((r for r in out if r.contender == "ar"), None)
    peer = next((r for r in out if r.contender not in METHODS), None)
    for r in out:
        if ar is not None:
            r.vs_ar = r.tokens_per_s / ar.tokens_per_s
        if peer is not None and r is not peer:
            r.vs_peer = r.tokens_per_s / peer.tokens_per_s
    return out


def random_prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=gen).tolist()


PEERS = ("transformers", "transformers-assisted", "transformers-lookup", "none")
LOOKUP_TOKENS = 10  # transformers-lookup under gamma "auto": the value transformers' docs use


class Peer:
    """transformers' own `generate` on the same checkpoint, optionally with its assisted
    generation (`assistant_model`) on the same draft, or its prompt lookup (`lookup`:
    `prompt_lookup_num_tokens`, the peer of `ngram`). For a fair comparison the assistant drafts
    a fixed `gamma` tokens (constant schedule) and its confidence early-exit is off."""

    def __init__(
        self,
        model_dir: Path,
        dtype: torch.dtype,
        draft: Path | None = None,
        gamma: int | str = 4,
        lookup: bool = False,
        device: torch.device | str = "cpu",
    ):
        import transformers as tf

        self.device = torch.device(device)
        load = tf.AutoModelForCausalLM.from_pretrained
        self.model = load(model_dir, dtype=dtype).to(self.device).eval()
        self.assistant = None
        self.name = "transformers"
        self.extra: dict = {}
        if lookup:
            self.name = "transformers-lookup"
            self.extra = {"prompt_lookup_num_tokens": LOOKUP_TOKENS if gamma == "auto" else gamma}
        if draft is not None:
            self.name = "transformers-assisted"
            self.assistant = load(draft, dtype=dtype).to(self.device).eval()
            config = self.assistant.generation_config
            # gamma "auto": transformers' own adaptive ("heuristic") schedule
            auto = gamma == "auto"
            config.num_assistant_tokens = 4 if auto else gamma
            config.num_assistant_tokens_schedule = "heuristic" if auto else "constant"
            config.assistant_confidence_threshold = 0.0

    def supports(self, batch: int) -> bool:
        # assisted generation and prompt lookup are batch-1 only
        return (self.assistant is None and not self.extra) or batch == 1

    def generate(
        self, prompts: list[list[int]], new_tokens: int, batch: int, temperature: float = 0.0
    ) -> list[list[int]]:
        """Continuations, `batch` prompts per call (left-padded when ragged); greedy at 0, else
        plain sampling at `temperature` (transformers' default top-k 50 switched off)."""
        extra = {"assistant_model": self.assistant} if self.assistant is not None else self.extra
        sampling: dict = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        out: list[list[int]] = []
        for i in range(0, len(prompts), batch):
            chunk = prompts[i : i + batch]
            width = max(map(len, chunk))
            ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk], device=self.device)
            mask = [[0] * (width - len(p)) + [1] * len(p) for p in chunk]
            mask = torch.tensor(mask, device=self.device)
            with torch.inference_mode():
                gen = self.model.generate(
                    ids,
                    attention_mask=mask,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    **sampling,
                    pad_token_id=0,
                    **extra,
                )
            out += gen[:, width:].tolist()
        return out


def _assistant(llm: LLM, draft: Path | None) -> Path:
    """The draft as `transformers` takes it: a whole model directory. A draft that borrows the
    target's embeddings (the shipped SmolLM2 draft) is exported whole first."""
    from braid.methods.draft import shared_embeddings_spec
    from braid.training.train_draft import hf_draft_dir

    # default: the code model's bundled draft, or the shipped draft where it fits, else a clear
    # error (the LLM's own rule for its draft methods)
    path = find_model(draft if draft is not None else llm._default_draft())
    return hf_draft_dir(path) if shared_embeddings_spec(path) is not None else path


def bench_model(
    name: str,
    model_dir: Path,
    methods: list[str],
    peer: str,
    batches: list[int],
    prompt_len: int,
    new_tokens: int,
    runs: int,
    warmup: int,
    dtype: str,
    bandwidth: float,
    draft: Path | None = None,
    progress=None,
    gamma: int = 4,
    texts: Texts | None = None,
    temperature: float = 0.0,
    quality: Quality | None = None,
    meter: EnergyMeter | None = None,
    heads: Path | None = None,
    device: str | None = None,
    chat: bool = False,
) -> list[Row]:
    # the thread count `run` chose (LLM would otherwise take all cores)
    threads = torch.get_num_threads()
    llm = LLM(
        model_dir,
        dtype=dtype,
        max_batch=max(batches),
        draft=draft,
        heads=heads,
        threads=threads,
        device=device,
    )
    ref = None
    if peer != "none":
        assistant = None
        if peer == "transformers-assisted":
            assistant = resolve_model_dir(_assistant(llm, draft), llm.model.dtype)
        lookup = peer == "transformers-lookup"
        ref = Peer(Path(llm.model_dir), llm.model.dtype, assistant, gamma, lookup, llm.device)
    streamed = streamed_weight_bytes(Path(llm.model_dir))  # a .gguf: its converted directory
    braid_bytes = llm.model.weight_bytes()
    if texts is None:  # random ids: one batch of `batch` prompts per timed call
        sets = {
            b: {"random": random_prompts(b, prompt_len, llm.model.config.vocab_size)}
            for b in batches
        }
    else:
        groups = texts(llm.tokenizer) if callable(texts) else texts
        if chat:  # each text one user turn under the model's template (Spec-Bench's protocol)
            groups = chat_turns(groups, llm.chat_prompt)
        encoded = encode(groups, llm.tokenizer, prompt_len)
        sets = {b: encoded for b in batches}
    rows: list[Row] = []
    for batch in batches:
        llm.max_batch = batch  # continuous batching with `batch` requests at a time
        with_peer = ref is not None and ref.supports(batch)
        group_rows: list[Row] = []
        for group, prompts in sets[batch].items():
            group_rows += _time_group(
                llm,
                ref if with_peer else None,
                name,
                batch,
                group,
                prompts,
                methods,
                new_tokens,
                runs,
                warmup,
                gamma,
                progress,
                streamed,
                braid_bytes,
                bandwidth,
                temperature,
                quality,
                meter,
            )
        rows += group_rows
        if len(sets[batch]) > 1:
            rows += overall_rows(group_rows)
    return rows


def _time_group(
    llm,
    ref,
    name,
    batch,
    group,
    prompts,
    methods,
    new_tokens,
    runs,
    warmup,
    gamma,
    progress,
    streamed,
    braid_bytes,
    bandwidth,
    temperature,
    quality=None,
    meter=None,
) -> list[Row]:
    seeds = range(len(prompts))  # seeded per prompt: every run samples the same outputs
    params = [
        SamplingParams(max_tokens=new_tokens, temperature=temperature, seed=i, ignore_eos=True)
        for i in seeds
    ]
    times: dict[str, list[float]] = {m: [] for m in methods + (["peer"] if ref else [])}
    joules: dict[str, list[float]] = {m: [] for m in times}
    stats, tokens = {}, {}
    total = len(prompts) * new_tokens
    for r in range(warmup + runs):
        for contender in times:
            if meter is not None:
                meter.begin()
            t = time.perf_counter()
            if contender == "peer":
                tokens["peer"] = ref.generate(prompts, new_tokens, batch, temperature)
            else:
                method = MethodConfig.sharing_gamma(contender, gamma)
                outs = llm.generate(prompts, params, method=method)
                tokens[contender] = [o.token_ids for o in outs]
                stats[contender] = [o.stats for o in outs]
            elapsed = time.perf_counter() - t
            energy = meter.end() if meter is not None else float("nan")
            if r >= warmup:
                times[contender].append(total / elapsed)
                joules[contender].append(energy / total)
            if progress is not None:
                progress.update(1)
    peer_tps = statistics.median(times["peer"]) if ref else float("nan")
    ar_tps = statistics.median(times["ar"]) if "ar" in times else float("nan")
    rows = []
    for contender, tps_runs in times.items():
        tps = statistics.median(tps_runs)
        label = ref.name if contender == "peer" else contender
        row = Row(name, batch, label, tps, prompts=group, runs=tps_runs, tokens=total)
        row.joules_per_token = statistics.median(joules[contender])
        row.vs_ar = tps / ar_tps
        if contender == "peer":
            row.tokens_per_pass = 1.0 if ref.assistant is None and not ref.extra else float("nan")
        else:
            s = stats[contender]
            row.tokens_per_pass = total / sum(x.passes for x in s)
            proposed = row.drafted = sum(x.draft_tokens for x in s)
            if proposed:
                row.acceptance = sum(x.accepted_tokens for x in s) / proposed
            row.vs_peer = tps / peer_tps
            if ref:
                same = sum(a == b for a, b in zip(tokens[contender], tokens["peer"]))
                row.same_tokens = f"{same}/{len(prompts)}"
        passes_per_s = tps / batch / row.tokens_per_pass  # approximate; nan when unknown
        row.roofline = streamed * passes_per_s / bandwidth
        if contender != "peer":
            row.roofline_braid = braid_bytes * passes_per_s / bandwidth
        rows.append(row)
    if quality is not None:
        _measure_quality(llm, name, group, rows, prompts, tokens, methods, gamma, quality)
    return rows


def _measure_quality(llm, name, group, rows, prompts, tokens, methods, gamma, quality) -> None:
    """Perplexity of each method's last timed outputs, and the first-tokens TV from `ar`."""
    key = (name, group)
    if key not in quality.measured:
        batch, llm.max_batch = llm.max_batch, quality.batch
        try:
            tv = q.distance_from_ar(
                llm, prompts[: quality.prompts], methods, gamma, quality.seeds, quality.k
            )
        finally:
            llm.max_batch = batch
        quality.measured[key] = {
            m: (q.perplexity(llm.model, prompts, tokens[m]), tv[m]) for m in methods
        }
    for row in rows:
        if row.contender in methods:
            row.perplexity, row.tv_vs_ar = quality.measured[key][row.contender]


def run(
    models: list[tuple[str, Path]],
    methods: list[str],
    peer: str = "transformers",
    batches: tuple[int, ...] = (1, 8),
    prompt_len: int = 64,
    new_tokens: int = 256,
    runs: int = 3,
    warmup: int = 1,
    dtype: str = "bf16",
    threads: int | None = None,
    draft: Path | None = None,
    show_progress: bool = True,
    gamma: int = 4,
    texts: Texts | None = None,
    temperature: float = 0.0,
    quality: Quality | None = None,
    heads: Path | None = None,
    device: str | None = None,
    chat: bool = False,
) -> dict:
    """Benchmark every model; returns {"machine", "bandwidth", "settings", "rows"}.

    `texts`: prompt groups (e.g. Spec-Bench subtasks), each timed as a whole with `batch`
    requests at a time; None = random token ids, one batch of `batch` prompts per call.
    `quality`: also measure perplexity and distance from `ar` (untimed, after each group).
    """
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    bandwidth = memory_bandwidth()
    meter = EnergyMeter()
    if peer not in PEERS:
        raise ValueError(f"peer must be one of {PEERS}")
    progress = None
    if show_progress:
        from tqdm import tqdm

        peer_calls = sum(peer == "transformers" or (peer != "none" and b == 1) for b in batches)
        groups = 1 if texts is None or callable(texts) else len(texts)
        total = len(models) * groups * (warmup + runs) * (len(batches) * len(methods) + peer_calls)
        progress = tqdm(total=total, desc="bench", unit="call")
    rows = []
    try:
        for name, model_dir in models:
            rows += bench_model(
                name,
                model_dir,
                methods,
                peer,
                list(batches),
                prompt_len,
                new_tokens,
                runs,
                warmup,
                dtype,
                bandwidth,
                draft,
                progress,
                gamma,
                texts,
                temperature,
                quality,
                meter,
                heads=heads,
                device=device,
                chat=chat,
            )
    finally:
        if progress is not None:
            progress.close()
    return {
        "machine": describe(threads),
        "bandwidth_gb_s": bandwidth / 1e9,
        "settings": dict(
            batches=list(batches),
            prompt_len=prompt_len,
            new_tokens=new_tokens,
            runs=runs,
            warmup=warmup,
            dtype=dtype,
            device=str(resolve_device(device)),
            methods=methods,
            peer=peer,
            gamma=gamma,
            prompts=sorted({r.prompts for r in rows}),
            temperature=temperature,
            chat=chat,
            energy=meter.reason,
            quality={k: v for k, v in vars(quality).items() if k != "measured"}
            if quality
            else None,
        ),
        "rows": [vars(r) for r in rows],
    }
