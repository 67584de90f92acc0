# ruff: noqa: F811  (pytest fixtures imported by name from _io_fixtures)
"""Chat templates render exactly as transformers' apply_chat_template."""

from __future__ import annotations

import json

import pytest

from model.chat_template import ChatTemplateError, render_chat_template
from model.tokenizer import Tokenizer
from tests.model._io_fixtures import (  # noqa: F401 - fixtures used by name
    hf_smollm2_tokenizer,
    smollm2,
    smollm2_gguf,
    tiny_llama,
)

# A Qwen/Hermes-style template: tools in the system turn, tool calls and tool results.
TOOL_TEMPLATE = """{{- bos_token }}
{%- if tools %}
<|im_start|>system
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}

{% endif %}# Tools
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools><|im_end|>
{%- elif messages[0]['role'] == 'system' %}
<|im_start|>system
{{ messages[0]['content'] }}<|im_end|>
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' %}{% continue %}{% endif %}
    {%- if message.role == 'tool' %}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
    {%- elif message.role == 'assistant' and message.tool_calls %}
<|im_start|>assistant
{% for call in message.tool_calls %}<tool_call>
{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson(indent=2) }}
</tool_call>{% endfor %}<|im_end|>
    {%- elif message.role in ['user', 'assistant'] %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
    {%- else %}
{{ raise_exception('unknown role ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city <with markup & stuff>",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
CONVERSATION = [
    {"role": "system", "content": "You are terse. Prix: 5 €."},
    {"role": "user", "content": "Weather in Zürich?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
    {"role": "tool", "name": "get_weather", "content": json.dumps({"temp_c": 21, "sky": "clear"})},
]


def _hf_tokenizer(tiny_llama_path):
    from transformers import PreTrainedTokenizerFast

    ours = Tokenizer.from_gguf(tiny_llama_path)
    return ours, PreTrainedTokenizerFast(
        tokenizer_object=ours.backend, bos_token="<|im_start|>", eos_token="<|im_end|>"
    )


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_tools_and_tool_results_render_like_transformers(tiny_llama, add_generation_prompt):
    ours, hf = _hf_tokenizer(tiny_llama[0])
    ours.chat_template = TOOL_TEMPLATE
    expected = hf.apply_chat_template(CONVERSATION, tools=TOOLS, chat_template=TOOL_TEMPLATE,
                                      tokenize=False, add_generation_prompt=add_generation_prompt)
    got = ours.apply_chat_template(CONVERSATION, tools=TOOLS, add_generation_prompt=add_generation_prompt)
    assert got == expected
    assert "<with markup & stuff>" in got  # tojson does not HTML-escape
    assert got.startswith("<|im_start|>") and "Zürich" in got


@pytest.mark.slow
def test_default_model_template_like_transformers(smollm2, hf_smollm2_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of Peru?"}]
    for convo in (messages, messages[1:]):  # with and without a system prompt
        expected = hf_smollm2_tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
        assert smollm2.render_chat(convo) == expected
        ids = hf_smollm2_tokenizer.apply_chat_template(convo, tokenize=True, add_generation_prompt=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        assert smollm2.encode_chat(convo) == list(ids)


def test_template_errors_are_typed():
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat_template(None, [{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="unknown role robot"):
        render_chat_template(TOOL_TEMPLATE, [{"role": "robot", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat_template("{% for %}", [])
    with pytest.raises(ChatTemplateError, match="role"):
        render_chat_template(TOOL_TEMPLATE, [{"content": "no role"}])


def test_sandbox_and_helpers():
    with pytest.raises(ChatTemplateError):
        render_chat_template("{{ messages.__class__.__mro__ }}{% set ns = namespace(_x=1) %}", [])
    out = render_chat_template(
        "{% generation %}{{ strftime_now('%Y') }}{% endgeneration %}|{{ extra }}", [], extra="kw"
    )
    year, extra = out.split("|")
    assert year.isdigit() and len(year) == 4 and extra == "kw"
