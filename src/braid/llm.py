"""The public entry point, shaped like vLLM's: `LLM(model).generate(prompts, SamplingParams())`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from braid.engine.engine import Engine
from braid.engine.request import RequestOutput
from braid.errors import InvalidRequestError, ModelLoadError
from braid.methods import DRAFT_METHODS, HEADS_METHODS, METHODS, make_method
from braid.model.loader import load_model
from braid.model.tokenizer import Tokenizer
from braid.model.transformer import Transformer
from braid.sampling import SamplingParams

ASSETS = Path(__file__).parent / "assets" / "models"
BUNDLED_HEADS = ASSETS.parent / "heads" / "n4-r1"  # the bundled target's default CP heads


def bundled_model(name: str = "target") -> Path:
    """Path of a model shipped inside the package (`target`, `draft`)."""
    path = ASSETS / name
    if not (path / "config.json").exists():
        raise ModelLoadError(
            f"the bundled {name!r} model is not installed at {path}; pass a model directory "
            "(LLM(model=DIR) or --model DIR)"
        )
    return path


class LLM:
    """A loaded model ready to generate.

    model: a Hugging Face-format directory (or cache entry); None = the bundled default.
    dtype: "bf16", "fp16", "fp32" or None (bf16 where the CPU has native bf16, else fp32).
    threads: torch CPU threads; None = all cores.
    max_batch: how many requests run at once (continuous batching admits the rest as they leave).
    draft: the draft model directory for `spec` / `block` (default: the bundled draft), loaded
    on first use; it must share the target's tokenizer on every id both have.
    heads: CP heads directory for `heads` / `heads-block` / `heads-tree` (`braid
    train-heads`); default: the bundled heads when the model is the bundled target. Loaded and
    checked here.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        dtype: str | torch.dtype | None = None,
        threads: int | None = None,
        max_batch: int = 8,
        draft: str | Path | None = None,
        heads: str | Path | None = None,
    ):
        if threads is not None and threads < 1:
            raise InvalidRequestError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.model, self.model_dir = load_model(
            model if model is not None else bundled_model(), dtype
        )
        self.tokenizer = Tokenizer(self.model_dir)
        if self.tokenizer.vocab_size > self.model.config.vocab_size:
            raise ModelLoadError(
                f"{self.model_dir}: tokenizer has {self.tokenizer.vocab_size} tokens but the model "
                f"only {self.model.config.vocab_size} embeddings"
            )
        if max_batch < 1:
            raise InvalidRequestError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.dtype = self.model.dtype
        self._draft_path = draft
        self._draft: Transformer | None = None
        # heads given explicitly are checked now; the bundled default loads on first use
        self._heads = None if heads is None else self._load_heads(heads)
        is_target = Path(self.model_dir).resolve() == (ASSETS / "target").resolve()
        self._default_heads = is_target and (BUNDLED_HEADS / "heads.json").exists()

    def draft_model(self) -> Transformer:
        if self._draft is None:
            path = self._draft_path if self._draft_path is not None else bundled_model("draft")
            draft, draft_dir = load_model(path, self.dtype)
            check_shared_vocabulary(self.tokenizer, Tokenizer(draft_dir), draft_dir)
            self._draft = draft
        return self._draft

    def _load_heads(self, path: str | Path):
        from braid.heads.io import load_heads

        c = self.model.config
        return load_heads(path, hidden_size=c.hidden_size, vocab_size=c.vocab_size)

    def _engine(
        self,
        method: str,
        gamma: int | str = 4,
        beams: int = 4,
        tau: float = 0.5,
        max_paths: int = 16,
        max_depth: int = 4,
    ) -> Engine:
        if gamma == "auto":
            if method not in DRAFT_METHODS:
                raise InvalidRequestError(
                    f"gamma='auto' (adaptive) is for the draft-model methods "
                    f"{', '.join(DRAFT_METHODS)}, not {method!r}"
                )
        elif not isinstance(gamma, int) or gamma < 1:
            raise InvalidRequestError(f"gamma must be an integer >= 1 or 'auto', got {gamma!r}")
        if beams < 1 or not tau > 0:
            raise InvalidRequestError(f"need beams >= 1 and tau > 0; got {beams}, {tau}")
        if method not in METHODS:
            raise InvalidRequestError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
        draft = self.draft_model() if method in DRAFT_METHODS else None
        heads = None
        if method in HEADS_METHODS:
            if self._heads is None and self._default_heads:
                self._heads = self._load_heads(BUNDLED_HEADS)
            heads = self._heads
        return Engine(
            self.model,
            self.tokenizer,
            make_method(method, draft, gamma, beams, tau, max_paths, max_depth, heads=heads),
            self.max_batch,
        )

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        method: str = "ar",
        use_tqdm: bool = False,
        gamma: int | str = 4,
        beams: int = 4,
        tau: float = 0.5,
        max_paths: int = 16,
        max_depth: int = 4,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text, or a list of token ids); outputs in prompt order.

        method: "ar"; "spec" / "block": draft-model speculative decoding with token-level or
        block verification (exact: the output distribution of "ar"); "mtad" / "mtad-tree": the
        draft beam-samples (`beams` beams) and the target keeps the longest draft prefix whose
        joint probability ratio exceeds `tau` (lossy by design; equal to "ar" at temperature 0).
        "heads" / "heads-block": CP heads (`heads=DIR`) draft n - 1 tokens from the target's
        own hidden state, verified token-level / block (exact); "heads-tree": for greedy requests
        the heads draft a tree of `gamma` candidates (their fitted template), verified in one
        pass; sampled requests run "heads".
        gamma: drafted tokens per target pass (heads-tree: tree nodes); "auto" (spec, block,
        mtad, mtad-tree) adapts it per request from its acceptance (+2 after a fully accepted
        draft, -1 after a rejection, 1..8).
        "multiverse": the model forks its own parallel paths (`</Goal>` with numbered outlines);
        blocks with more than `max_paths` paths or
        nested deeper than `max_depth` decode sequentially; max_tokens bounds the critical path
        and SamplingParams.max_total_tokens all tokens (see braid.methods.multiverse).
        """
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise InvalidRequestError("no prompts given")
        params = params if params is not None else SamplingParams()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise InvalidRequestError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
        engine = self._engine(method, gamma, beams, tau, max_paths, max_depth)
        progress = None
        if use_tqdm:
            from tqdm import tqdm

            progress = tqdm(total=len(prompts), desc="generate", unit="req")
        try:
            return engine.generate(prompts, params, progress)
        finally:
            if progress is not None:
                progress.close()

    def stream(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        method: str = "ar",
        gamma: int | str = 4,
        beams: int = 4,
        tau: float = 0.5,
        max_paths: int = 16,
        max_depth: int = 4,
    ) -> Iterator[str]:
        """Yield text deltas as they are generated; never splits a multi-byte character."""
        engine = self._engine(method, gamma, beams, tau, max_paths, max_depth)
        req = engine.add_request(prompt, params or SamplingParams())
        try:
            while engine.has_unfinished:
                engine.step()
                delta = req.take_delta()
                if delta:
                    yield delta
        finally:
            engine.abort_all()
        self.last_stream_output = req.output()


def check_shared_vocabulary(target: Tokenizer, draft: Tokenizer, draft_dir: Path) -> None:
    """Draft and target must mean the same token by every id they share (padding may differ)."""
    a, b = target.id_to_token(), draft.id_to_token()
    shared = set(a) & set(b)
    if not shared:
        raise ModelLoadError(f"{draft_dir}: the draft's tokenizer shares no ids with the target's")
    bad = sorted(i for i in shared if a[i] != b[i])
    if bad:
        i = bad[0]
        raise ModelLoadError(
            f"{draft_dir}: draft and target tokenizers differ ({len(bad)} ids, e.g. id {i} is "
            f"{b[i]!r} in the draft and {a[i]!r} in the target); use a draft trained with the "
            "target's tokenizer"
        )
