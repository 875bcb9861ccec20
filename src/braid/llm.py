"""The public entry point, shaped like vLLM's: `LLM(model).generate(prompts, SamplingParams())`."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from braid.chat import ChatTemplate
from braid.device import resolve_device
from braid.engine.engine import Engine
from braid.engine.request import RequestOutput
from braid.errors import BraidError, InvalidRequestError, ModelLoadError
from braid.methods import DRAFT_METHODS, HEADS_METHODS, make_method
from braid.methods.config import OPTIONS, MethodConfig, method_config
from braid.methods.draft import (
    SHIPPED_DRAFT,
    load_shared_draft,
    shared_embeddings_spec,
    vocabulary_fingerprint,
)
from braid.methods.policy import CostModel
from braid.model.loader import load_model, read_generation_config
from braid.model.registry import (
    ASSETS,
    BUNDLED_HEADS,
    CODE_DRAFT,
    DEFAULT,
    SHIPPED_HEADS,
    bundled_model,
    find_model,
    is_code_model,
)
from braid.model.tokenizer import Tokenizer
from braid.model.transformer import Transformer
from braid.sampling import SamplingParams


class LLM:
    """A loaded model ready to generate.

    model: a Hugging Face-format directory (or cache entry), a `.gguf` file (or a directory
    holding one), a bundled model's name (`braid models`), or None: the default model,
    SmolLM2-135M-Instruct.
    dtype: "bf16", "fp16", "fp32" or None (bf16 where the CPU has native bf16, else fp32).
    weights: how the matrices are kept: "auto" (None: a GGUF file's own precision, its Q4_0 /
    Q4_1 / Q8_0 integers on int4 kernels; other checkpoints dense in `dtype`), "bf16" / "fp32"
    (dequantized), "int8" / "int4" (weight-only, quantized at load where the file is not).
    An explicit `dtype` with `weights` unset means dequantized weights in that dtype.
    threads: torch CPU threads; None = all cores.
    device: where the model, draft, heads, caches and sampling live: "auto" (None: CUDA when
    torch sees it, else the CPU), "cpu", "cuda", "cuda:N" or "mps" (braid.device). Off the CPU,
    quantized weights run dequantized in bf16 (model/loader.py `_take` says why).
    max_batch: how many requests run at once (continuous batching admits the rest as they leave).
    draft: the draft model for `spec` / `block` / `mtad` / `mtad-tree`, loaded on first use; it
    must share the target's tokenizer on every id both have. Default: the bundled draft for the
    bundled code model, the shipped `smollm2-draft` for SmolLM2-135M-Instruct (and any model
    with its tokenizer and hidden size); other models need one named.
    heads: CP heads directory for `heads` / `heads-block` / `heads-tree` (`braid
    train-heads`); default: the bundled heads for the bundled code model. Loaded and checked
    here.
    adapter: a `peft` LoRA adapter directory, merged into the weights at load (a GGUF then
    runs dequantized); its tokenizer.json, when it has one (a fine-tune that added tokens),
    replaces the model's, and so do its generation_config.json's defaults.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        dtype: str | torch.dtype | None = None,
        threads: int | None = None,
        max_batch: int = 8,
        draft: str | Path | None = None,
        heads: str | Path | None = None,
        weights: str | None = None,
        adapter: str | Path | None = None,
        device: str | torch.device | None = None,
    ):
        if threads is not None and threads < 1:
            raise InvalidRequestError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.device = resolve_device(device)
        self.model, self.model_dir = load_model(
            find_model(model), dtype, weights, adapter=adapter, device=self.device
        )
        self.name = DEFAULT.name if model is None else Path(str(model)).name
        own = Path(adapter).expanduser() if adapter is not None else None
        has = own is not None and (own / "tokenizer.json").is_file()
        self.tokenizer = Tokenizer(own if has else self.model_dir)
        if self.tokenizer.vocab_size > self.model.config.vocab_size:
            raise ModelLoadError(
                f"{self.model_dir}: tokenizer has {self.tokenizer.vocab_size} tokens but the model "
                f"only {self.model.config.vocab_size} embeddings"
            )
        if max_batch < 1:
            raise InvalidRequestError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.dtype = self.model.dtype
        # sampling defaults the model ships (vLLM's generation_config="auto"); callers' values win
        self.generation_defaults = read_generation_config(Path(self.model_dir))
        if own is not None:
            self.generation_defaults |= read_generation_config(own)
        self._chat_template: ChatTemplate | None = None
        self._end_of_turn: dict[ChatTemplate, tuple[int, ...]] = {}
        self.last_stream_output: RequestOutput | None = None
        self._costs = CostModel()  # the draft-length policy's timings, shared by every engine
        self._draft_path = draft
        self._draft: Transformer | None = None
        # heads given explicitly are checked now; the bundled default loads on first use
        self._heads = None if heads is None else self._load_heads(heads)
        self._code_model = is_code_model(self.model_dir)
        self._default_heads = self._code_model and (BUNDLED_HEADS / "heads.json").exists()

    def draft_model(self) -> Transformer:
        if self._draft is None:
            path = self._draft_path
            if path is None:
                path = self._default_draft()
            path = find_model(path)
            if shared_embeddings_spec(path) is not None:  # borrows this model's embeddings
                vocab = self.tokenizer.id_to_token()
                self._draft = load_shared_draft(path, self.model, vocab, self.dtype)
                return self._draft
            draft, draft_dir = load_model(path, self.dtype, device=self.device)
            check_shared_vocabulary(self.tokenizer, Tokenizer(draft_dir), draft_dir)
            self._draft = draft
        return self._draft

    def _default_draft(self) -> Path:
        """The bundled code model's draft, or the shipped draft of the default model when it
        fits this one (same hidden size, vocabulary and tokenizer)."""
        if self._code_model:
            return bundled_model(CODE_DRAFT)
        shipped = ASSETS / SHIPPED_DRAFT
        spec = shared_embeddings_spec(shipped)
        if spec is not None and self._fits(spec, spec.get("vocabulary_sha256")):
            return shipped
        raise ModelLoadError(
            f"no draft model ships for {self.name} yet: pass one (--draft DIR, "
            "LLM(..., draft=DIR)) that shares its tokenizer"
        )

    def heads(self):
        """The CP heads of the heads methods: given, the bundled code model's, or the shipped
        heads of the default model when they fit this one (same tokenizer and sizes)."""
        if self._heads is None and self._default_heads:
            self._heads = self._load_heads(BUNDLED_HEADS)
        if self._heads is None and (shipped := self._shipped_heads()) is not None:
            self._heads = self._load_heads(shipped)
        if self._heads is None:
            raise ModelLoadError(
                f"no CP heads ship for {self.name} yet: train them with `braid train-heads` and "
                "pass them (--heads DIR, LLM(..., heads=DIR))"
            )
        return self._heads

    def _shipped_heads(self) -> Path | None:
        path = SHIPPED_HEADS
        try:
            spec = json.loads((path / "heads.json").read_text())
        except (OSError, ValueError):
            return None
        vocabulary = spec.get("base_model", {}).get("vocabulary_sha256")
        return path if self._fits(spec, vocabulary) else None

    def _fits(self, spec: dict, vocabulary_sha256: str | None) -> bool:
        """Whether a shipped companion (draft, heads) recorded for this model's sizes and
        tokenizer fits it."""
        c = self.model.config
        sizes = (spec.get("hidden_size"), spec.get("vocab_size")) == (c.hidden_size, c.vocab_size)
        tokens = vocabulary_fingerprint(self.tokenizer.id_to_token())
        return sizes and vocabulary_sha256 == tokens

    def _load_heads(self, path: str | Path):
        from braid.heads.io import load_heads

        c = self.model.config
        heads = load_heads(path, hidden_size=c.hidden_size, vocab_size=c.vocab_size)
        return heads.to(self.device)

    def _engine(self, method: str | MethodConfig) -> Engine:
        config = method_config(method)
        method = config.name
        draft = self.draft_model() if method in DRAFT_METHODS else None
        heads = None
        if method in HEADS_METHODS:
            heads = self.heads()
        made = make_method(config, draft=draft, heads=heads)
        self._costs.attach(made)  # pass times measured by earlier engines carry over
        return Engine(self.model, self.tokenizer, made, self.max_batch)

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        method: str | MethodConfig = "ar",
        use_tqdm: bool = False,
        **legacy: Any,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text, or a list of token ids); outputs in prompt order,
        each with its `SamplingParams.n` samples in `outputs` (`text` etc. are sample 0's).

        method: a `MethodConfig` (options in its docstring), or a method's name with default
        options. "ar"; "spec" / "block": draft-model speculative decoding with token-level or
        block verification (exact: the output distribution of "ar"); "mtad" / "mtad-tree": the
        draft beam-samples (`beams` beams) and the target keeps the longest draft prefix whose
        joint probability ratio exceeds `tau` (lossy by design; equal to "ar" at temperature 0).
        "heads" / "heads-block": CP heads (`heads=DIR`) draft n - 1 tokens from the target's
        own hidden state, verified token-level / block (exact); "heads-tree": for greedy requests
        the heads draft a tree of `gamma` candidates (their fitted template), verified in one
        pass; sampled requests run "heads". "ngram" / "ngram-block": prompt lookup, drafts
        copied from what followed the latest earlier match of the text's last 3..1 tokens,
        verified token-level / block (exact; needs no draft, so any model). "multiverse": the
        model forks its own parallel paths (`</Goal>` with numbered outlines); max_tokens
        bounds the critical path and SamplingParams.max_total_tokens all tokens (see
        braid.methods.multiverse).
        legacy: gamma=, beams=, tau=, max_paths=, max_depth= (deprecated; kept for one release)
        override the config's options.
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
        params = [p.with_defaults(self.generation_defaults) for p in params]
        engine = self._engine(_with_legacy_options(method, legacy))
        progress = None
        if use_tqdm:
            from tqdm import tqdm

            progress = tqdm(total=sum(p.n for p in params), desc="generate", unit="sample")
        try:
            return engine.generate(prompts, params, progress)
        finally:
            if progress is not None:
                progress.close()

    def stream(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        method: str | MethodConfig = "ar",
        **legacy: Any,
    ) -> Iterator[str]:
        """Yield text deltas as they are generated; never splits a multi-byte character.

        One sample only (n = 1): interleaved deltas of several would not read as text. `method`
        and `legacy` as in `generate`; the output with stats is `last_stream_output` after."""
        params = (params or SamplingParams()).with_defaults(self.generation_defaults)
        if params.n != 1:
            raise InvalidRequestError(f"stream yields one sample; use generate for n={params.n}")
        engine = self._engine(_with_legacy_options(method, legacy))
        req = engine.add_request(prompt, params)
        try:
            while engine.has_unfinished:
                engine.step()
                if req.error is not None:  # the engine failed it alone; the caller hears why
                    raise req.error
                delta = req.take_delta()
                if delta:
                    yield delta
        finally:  # also when the caller stops early: free the request, keep what it produced
            engine.abort_all()
            self.last_stream_output = req.output()

    # -- chat ---------------------------------------------------------------------------------
    def chat_template(self) -> ChatTemplate:
        """The model's chat template (tokenizer_config.json, chat_template.jinja or GGUF)."""
        if self._chat_template is None:
            self._chat_template = ChatTemplate.from_model_dir(
                Path(self.model_dir), **self.tokenizer.special_token_texts()
            )
        return self._chat_template

    def chat_prompt(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
    ) -> list[int]:
        """Token ids of a conversation rendered by the chat template (as `transformers`'
        `apply_chat_template(..., tokenize=True)`: the template writes any bos itself)."""
        text = self._template(chat_template).render(
            list(messages), add_generation_prompt=add_generation_prompt
        )
        return self.tokenizer.encode(text, special=False)

    def _template(self, source: str | None) -> ChatTemplate:
        if source is None:
            return self.chat_template()
        return ChatTemplate(source, **self.tokenizer.special_token_texts())

    def chat(
        self,
        messages: Sequence[dict] | Sequence[Sequence[dict]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        method: str | MethodConfig = "ar",
        use_tqdm: bool = False,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
    ) -> list[RequestOutput]:
        """Answer one conversation (a list of {"role", "content"} messages) or several, as
        vLLM's `LLM.chat`: rendered by the chat template, stopped at its end-of-turn token."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        if not conversations:
            raise InvalidRequestError("no conversation given")
        prompts = [self.chat_prompt(c, add_generation_prompt, chat_template) for c in conversations]
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        template = self._template(chat_template)
        params = [self.chat_params(p, template) for p in params]
        return self.generate(prompts, params, method, use_tqdm)

    def stream_chat(
        self,
        messages: Sequence[dict],
        params: SamplingParams | None = None,
        method: str | MethodConfig = "ar",
    ) -> Iterator[str]:
        """`stream` for one conversation: text deltas of the assistant's answer."""
        ids = self.chat_prompt(messages)
        params = self.chat_params(params or SamplingParams())
        return self.stream(ids, params, method)

    def chat_params(
        self, params: SamplingParams, template: ChatTemplate | None = None
    ) -> SamplingParams:
        """`params` that also stop at the template's end-of-turn token (e.g. <|im_end|>)."""
        template = template or self.chat_template()
        if template not in self._end_of_turn:  # rendered once per template
            self._end_of_turn[template] = end_of_turn_ids(template, self.tokenizer)
        eot = self._end_of_turn[template]
        extra = tuple(t for t in eot if t not in params.stop_token_ids)
        if not extra:
            return params
        out = replace(params, stop_token_ids=(*params.stop_token_ids, *extra))
        out.unset = params.unset  # still open to the model's generation defaults
        return out


def end_of_turn_ids(template: ChatTemplate, tokenizer: Tokenizer) -> tuple[int, ...]:
    """The special token a template writes right after an assistant message: that is where the
    model learnt to end its turn. Found by rendering a two-message conversation; () if none."""
    marker = "\u2063braid\u2063"  # text no template adds on its own
    try:
        text = template.render(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
            add_generation_prompt=False,
        )
    except BraidError:
        return ()
    if marker not in text:
        return ()
    after = tokenizer.encode(text.split(marker, 1)[1], special=False)
    special = tokenizer.special_ids()
    return tuple(t for t in after[:3] if t in special)[:1]


def _with_legacy_options(method: str | MethodConfig, legacy: dict[str, Any]) -> MethodConfig:
    """The method's config with the deprecated per-option keywords of `generate` folded in."""
    config = method_config(method)
    if not legacy:
        return config
    unknown = sorted(legacy.keys() - set(OPTIONS))
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    warnings.warn(
        f"{', '.join(f'{k}=' for k in legacy)} are deprecated: pass "
        f"method=MethodConfig({config.name!r}, ...) instead",
        DeprecationWarning,
        stacklevel=3,
    )
    return replace(config, **legacy)


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
