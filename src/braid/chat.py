"""Chat templates: turn a list of messages into the prompt text a chat model was trained on.

A model ships its template as Jinja source. Models are tuned on the text transformers renders, so
the template is compiled the same way transformers compiles it (a sandbox, since templates come
from the Hub; trim_blocks and lstrip_blocks; `loopcontrols`; its `tojson`, `raise_exception` and
`strftime_now`). Then a prompt braid renders is the prompt the model saw in training, byte for
byte. The template is compiled once per model, not once per request.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from braid.errors import InvalidRequestError, ModelLoadError


def load_chat_template(model_dir: Path) -> str | None:
    """The template source of a Hugging Face model directory, or None if it has none.

    The files are searched in transformers' order: `chat_template.jinja`, `chat_template.json`,
    then the `chat_template` key of `tokenizer_config.json`.
    """
    jinja = model_dir / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = model_dir / name
        if not path.exists():
            continue
        try:
            template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{path}: not valid JSON ({e})") from None
        if template is not None:
            return _pick_template(template, path)
    return None


def _pick_template(template: Any, path: Path) -> str:
    """A template given as a string, or the one named "default" in a list of named templates."""
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise ModelLoadError(
            f"{path}: chat_template lists {sorted(map(str, named))} but none named 'default'; "
            "pass the one to use with template=..."
        )
    raise ModelLoadError(f"{path}: chat_template must be a string or a list of named templates")


class _Generation(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` marks assistant text for training masks; rendering
    just emits the body, so templates that use the tag still compile."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(x: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # transformers' filter: no HTML escaping (Jinja's default), and json.dumps's options exposed
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


_ENV = _environment()


class ChatTemplate:
    """A compiled chat template and the special tokens it may reference (`bos_token`, ...)."""

    def __init__(
        self,
        source: str,
        bos_token: str | None = None,
        eos_token: str | None = None,
        **special_tokens: str | None,
    ):
        try:
            self._template = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ModelLoadError(f"chat template, line {e.lineno}: {e.message}") from None
        tokens = {"bos_token": bos_token, "eos_token": eos_token, **special_tokens}
        # transformers passes only the tokens that are set: a template sees the rest as undefined
        self.special_tokens = {k: v for k, v in tokens.items() if v is not None}

    @classmethod
    def from_model_dir(
        cls,
        model_dir: Path,
        bos_token: str | None = None,
        eos_token: str | None = None,
        template: str | None = None,
    ) -> ChatTemplate:
        """The model's own template, or `template` (Jinja source) when given, which wins."""
        source = template if template is not None else load_chat_template(model_dir)
        if source is None:
            raise ModelLoadError(
                f"{model_dir} has no chat template (chat_template.jinja, chat_template.json or "
                "tokenizer_config.json); pass one with template=..., or send a plain prompt"
            )
        try:
            return cls(source, bos_token=bos_token, eos_token=eos_token)
        except ModelLoadError as e:
            raise ModelLoadError(f"{model_dir}: {e}") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt text; `add_generation_prompt` appends the header that opens the assistant's
        turn. `extra` reaches the template as variables (e.g. `tools`) and overrides tokens."""
        messages = _check_messages(messages)
        context = {"tools": None, "documents": None, **self.special_tokens, **extra}
        try:
            return self._template.render(
                context, messages=messages, add_generation_prompt=add_generation_prompt
            )
        except Exception as e:  # the template is code: any failure is this request's failure
            message = (isinstance(e, jinja2.TemplateError) and e.message) or repr(e)
            raise InvalidRequestError(f"chat template failed: {message}") from None


def _check_messages(messages: Any) -> list[dict]:
    """Copies of the messages, with text parts joined (as vLLM does for text-only models) and
    keys set to None dropped (as transformers does: templates test for missing keys, not None)."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {role, content} objects")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(
                f"messages[{i}] must be an object, not {type(message).__name__}"
            )
        if not isinstance(message.get("role"), str):
            raise InvalidRequestError(f"messages[{i}].role must be a string")
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(_part_text(part, i, j) for j, part in enumerate(content))
        elif not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content must be a string or a list of parts")
        checked.append({k: v for k, v in message.items() if v is not None} | {"content": content})
    return checked


def _part_text(part: Any, i: int, j: int) -> str:
    if not (isinstance(part, dict) and part.get("type") == "text"):
        raise InvalidRequestError(f"messages[{i}].content[{j}]: only text parts are supported")
    if not isinstance(part.get("text"), str):
        raise InvalidRequestError(f"messages[{i}].content[{j}].text must be a string")
    return part["text"]
