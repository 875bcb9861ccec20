"""Request and response bodies of the OpenAI-compatible routes (pydantic models only).

Field names and meanings are OpenAI's, plus vLLM's extras (top_k, min_p, stop_token_ids,
ignore_eos, min_tokens, repetition_penalty) and braid's `speculation`. Unknown fields are
accepted and ignored, as vLLM does. A request turns itself into braid's `SamplingParams` with
`to_sampling_params`; every value is checked there (and by `SamplingParams`), so bad input is
a 400 that names the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from braid.errors import InvalidRequestError
from braid.sampling import MAX_LOGPROBS, SamplingParams

Number = StrictFloat | StrictInt


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(Lenient):
    include_usage: StrictBool = False


class Speculation(Lenient):
    """braid's per-request draft control (`extra_body={"speculation": {...}}`): `enabled`
    false turns drafting off for the request; `num_speculative_tokens` caps its draft length
    per step (clamped to the server's own limit; the response says what applied)."""

    enabled: StrictBool = True
    num_speculative_tokens: StrictInt | None = Field(default=None, ge=0)


class SamplingFields(Lenient):
    """What completions and chat share."""

    model: str | None = None
    max_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: StrictInt | None = None
    min_p: Number | None = None
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[StrictInt] | None = None
    ignore_eos: StrictBool = False
    min_tokens: StrictInt = 0
    n: StrictInt = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Number = 0.0
    frequency_penalty: Number = 0.0
    repetition_penalty: Number | None = None
    user: str | None = None
    speculation: Speculation | None = None

    @model_validator(mode="after")
    def _supported(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def logprob_count(self) -> int | None:
        """Alternatives per token the request asks for (None: no logprobs)."""
        return None

    def to_sampling_params(self, num_speculative_tokens: int | None = None) -> SamplingParams:
        """braid's params; None keeps a field open to the model's generation defaults."""
        top_k = self.top_k
        if top_k == -1:  # vLLM's (and OpenAI clients') "disabled"
            top_k = 0
        kw = dict(
            max_tokens=self.max_tokens,
            temperature=_number(self.temperature),
            top_p=_number(self.top_p),
            top_k=top_k,
            min_p=_number(self.min_p),
            seed=self.seed,
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or ()),
            stop_token_ids=list(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            presence_penalty=float(self.presence_penalty),
            frequency_penalty=float(self.frequency_penalty),
            repetition_penalty=_number(self.repetition_penalty),
            n=self.n,
            logprobs=self.logprob_count(),
            num_speculative_tokens=num_speculative_tokens,
        )
        return SamplingParams(**kw)


def _number(x: float | int | None) -> float | None:
    return None if x is None else float(x)


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    echo: StrictBool = False
    suffix: str | None = None
    best_of: StrictInt | None = None
    logprobs: StrictInt | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _prompt(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix is not supported: give the whole prompt")
        if self.best_of not in (None, self.n):
            raise ValueError("best_of is not supported: use n")
        if self.echo and self.logprobs is not None:
            raise ValueError("echo with logprobs is not supported (prompt logprobs): drop one")
        return self

    def logprob_count(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a text or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            out: list = [p]
        elif p and all(isinstance(x, int) for x in p):
            out = [list(p)]
        else:
            out = list(p)
        if not out or any(len(x) == 0 for x in out):
            raise InvalidRequestError("prompt is empty: give at least one token of text")
        return out


class ChatMessage(Lenient):
    role: str
    content: str | list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):  # OpenAI's content parts: only text parts are read
            if any(part.get("type") != "text" for part in content):
                raise InvalidRequestError("only text content parts are supported")
            content = "".join(str(part.get("text", "")) for part in content)
        return {"role": self.role, "content": content or ""}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: StrictInt | None = None
    add_generation_prompt: StrictBool = True
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _messages(self) -> ChatCompletionRequest:
        if not self.messages:
            raise ValueError("messages is empty: give at least one message")
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class TokenizeRequest(Lenient):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: StrictBool = True

    @model_validator(mode="after")
    def _one(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


class DetokenizeRequest(Lenient):
    model: str | None = None
    tokens: list[StrictInt]


# -- responses ----------------------------------------------------------------------------------
class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo


def error_body(message: str, code: int, param: str | None = None) -> dict:
    kind = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError"}
    kind |= {503: "ServiceUnavailableError", 500: "InternalServerError"}
    info = ErrorInfo(message=message, type=kind.get(code, "Error"), param=param, code=code)
    return ErrorResponse(error=info).model_dump()


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    logprobs: dict | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: dict | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "braid"
    max_model_len: int
