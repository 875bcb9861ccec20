"""Chat templates: braid must render the same text as transformers' apply_chat_template."""

import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

import braid
from braid.chat import ChatTemplate, load_chat_template
from braid.errors import InvalidRequestError, ModelLoadError

TOKENIZER = Path(braid.__file__).parent / "assets/models/code-23m/tokenizer.json"
BOS, EOS = "<|begin_of_text|>", "<|endoftext|>"

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] "
    "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# multi-line, so it also checks trim_blocks / lstrip_blocks
MISTRAL = """\
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token }}
    {%- endif %}
{%- endfor %}
"""
# tojson with its arguments, break/continue, the generation tag, strftime_now, `tools` as None
TOOLS = """\
{% for message in messages %}
{% if message.role == 'system' %}{% continue %}{% endif %}
    <|{{ message.role }}|>
{% if message.role == 'assistant' %}{% generation %}{{ message.content }}{% endgeneration %}
{% else %}{{ message.content }}
{% endif %}
  {% if message.tool_calls is defined %}{{ message.tool_calls | tojson(indent=2) }}
{% endif %}
{% if loop.index >= 3 %}{% break %}{% endif %}
{% endfor %}
{% if tools is not none %}<tools>{{ tools | tojson(separators=(',', ':'), sort_keys=true) }}
{% endif %}
{{ strftime_now('%Y') }}{% if add_generation_prompt %}<|assistant|>{% endif %}
"""

SYSTEM = {"role": "system", "content": "Be brief & <polite>."}
CHAT = [
    {"role": "user", "content": "  Héllo, what is 2+2?\n"},
    {"role": "assistant", "content": "4 ✓", "tool_calls": [{"name": "add", "args": [2, 2]}]},
    {"role": "user", "content": 'And "3+3"?', "tool_calls": None},  # None reads as unset
]
TOOL_LIST = [{"name": "add", "description": "a + b → c", "parameters": {"b": 1, "a": 0}}]


@pytest.fixture(scope="module")
def hf_tokenizer():
    return PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), bos_token=BOS, eos_token=EOS)


@pytest.mark.parametrize("template", [SMOLLM2, LLAMA3, MISTRAL, TOOLS])
@pytest.mark.parametrize("system", [False, True])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("tools", [None, TOOL_LIST])
def test_matches_transformers(hf_tokenizer, template, system, add_generation_prompt, tools):
    messages = [SYSTEM, *CHAT] if system else CHAT
    expected = hf_tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        tools=tools,
    )
    ours = ChatTemplate(template, bos_token=BOS, eos_token=EOS)
    extra = {"tools": tools} if tools else {}  # unset, tools is None, as in transformers
    assert ours.render(messages, add_generation_prompt, **extra) == expected


def test_unset_tokens_are_undefined():
    template = "{{ bos_token is defined }} {{ eos_token }} {{ pad_token is defined }}"
    hf = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), eos_token=EOS)
    expected = hf.apply_chat_template(CHAT, chat_template=template, tokenize=False)
    assert ChatTemplate(template, eos_token=EOS).render(CHAT) == expected


def test_text_parts_are_joined():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    out = ChatTemplate(SMOLLM2).render([{"role": "user", "content": parts}], False)
    assert out.endswith("<|im_start|>user\na\nb<|im_end|>\n")


def test_extra_overrides_special_tokens():
    out = ChatTemplate(LLAMA3, bos_token=BOS).render(CHAT[:1], bos_token="<B>")
    assert out.startswith("<B><|start_header_id|>user")


@pytest.mark.parametrize(
    "files",
    [
        {"chat_template.jinja": "J"},
        {"chat_template.json": json.dumps({"chat_template": "J"})},
        {"tokenizer_config.json": json.dumps({"chat_template": "J"})},
        {"chat_template.jinja": "J", "tokenizer_config.json": json.dumps({"chat_template": "T"})},
        {"chat_template.json": json.dumps({"chat_template": "J"}), "tokenizer_config.json": "{}"},
        {
            "tokenizer_config.json": json.dumps(
                {
                    "chat_template": [
                        {"name": "tool_use", "template": "T"},
                        {"name": "default", "template": "J"},
                    ]
                }
            )
        },
    ],
)
def test_load_chat_template(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert load_chat_template(tmp_path) == "J"


def test_no_template(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS}))
    assert load_chat_template(tmp_path) is None
    with pytest.raises(ModelLoadError, match="has no chat template.*pass one with template="):
        ChatTemplate.from_model_dir(tmp_path)
    given = ChatTemplate.from_model_dir(tmp_path, eos_token=EOS, template="{{ eos_token }}")
    assert given.render(CHAT) == EOS


def test_bad_files(tmp_path):
    (tmp_path / "chat_template.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="chat_template.json: not valid JSON"):
        load_chat_template(tmp_path)
    named = [{"name": "tool_use", "template": "T"}]
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": named}))
    with pytest.raises(ModelLoadError, match="none named 'default'"):
        load_chat_template(tmp_path)


def test_syntax_error_names_the_line(tmp_path):
    with pytest.raises(ModelLoadError, match="line 2"):
        ChatTemplate("{{ messages }}\n{% if %}")
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}")
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        ChatTemplate.from_model_dir(tmp_path)


def test_render_errors_are_request_errors():
    bad_order = [CHAT[0], CHAT[0]]
    with pytest.raises(InvalidRequestError, match="roles must alternate user/assistant"):
        ChatTemplate(MISTRAL, bos_token=BOS, eos_token=EOS).render(bad_order)
    with pytest.raises(InvalidRequestError, match="undefined"):
        ChatTemplate("{{ nothing.here }}").render(CHAT)
    with pytest.raises(InvalidRequestError):  # the sandbox refuses to mutate the input
        ChatTemplate("{{ messages.append(1) }}").render(CHAT)


@pytest.mark.parametrize(
    "messages, what",
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        (["hello"], r"messages\[0\] must be an object"),
        ([{"content": "x"}], r"messages\[0\]\.role"),
        ([CHAT[0], {"role": "user"}], r"messages\[1\]\.content"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], r"content\[0\]: only text"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], r"content\[0\]\.text"),
    ],
)
def test_malformed_messages(messages, what):
    with pytest.raises(InvalidRequestError, match=what):
        ChatTemplate(SMOLLM2).render(messages)
