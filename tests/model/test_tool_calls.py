# ruff: noqa: F811  (pytest fixtures imported by name from _io_fixtures)
"""Tool calls: parsing both formats, rendering tools, and the "text or tool call" grammar."""

from __future__ import annotations

import json

import pytest

from model import load
from model.grammar import GrammarError, GrammarMatcher, GrammarProcessor, GrammarTokenizer
from model.tool_calls import (
    parse_tool_calls,
    prepare_messages,
    template_renders_tools,
    tool_call_grammar,
    tool_call_schema,
)
from tests.model._io_fixtures import tiny_llama  # noqa: F401

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "name": "add",
    "description": "Add two integers.",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}
TOOLS = [WEATHER, ADD]
HERMES_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>"
    "Answer with <tool_call>{...}</tool_call>.{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_parse_tagged_calls_between_text():
    text = ('Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
            '</tool_call> and <tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}'
            "</tool_call>")
    out = parse_tool_calls(text, TOOLS)
    assert [(c.name, c.arguments) for c in out.tool_calls] == [
        ("get_weather", {"city": "Oslo"}), ("add", {"a": 1, "b": 2})]
    assert out.content == "Let me check.  and"
    assert out.tool_calls[0].id != out.tool_calls[1].id
    assert json.loads(out.tool_calls[1].to_openai()["function"]["arguments"]) == {"a": 1, "b": 2}


def test_parse_rejects_unknown_tools_and_bad_json_and_reads_bare_objects():
    assert parse_tool_calls('<tool_call>{"name": "rm", "arguments": {}}</tool_call>', TOOLS).tool_calls == []
    assert parse_tool_calls('<tool_call>{"name": "add", "argu', TOOLS).tool_calls == []
    bare = parse_tool_calls(' {"name": "add", "parameters": {"a": 1, "b": 2}} ', TOOLS)
    assert [(c.name, c.arguments) for c in bare.tool_calls] == [("add", {"a": 1, "b": 2})]
    assert bare.content == ""
    plain = parse_tool_calls("No tool needed: {curly} text.", TOOLS)
    assert plain.tool_calls == [] and plain.content == "No tool needed: {curly} text."


def test_generic_format_describes_tools_in_the_system_message():
    calls = [{"id": "c1", "type": "function",
              "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "1+2?"},
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "content": "3"}]
    out, template_tools = prepare_messages(messages, TOOLS, native=False)
    assert template_tools is None
    assert out[0]["content"].startswith("Be brief.\n\n") and "<tools>" in out[0]["content"]
    assert '"name": "get_weather"' in out[0]["content"]
    assert out[2]["content"] == '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    assert "tool_calls" not in out[2] and messages[2]["content"] is None  # input untouched


def test_native_format_passes_tools_to_the_template():
    assert template_renders_tools(HERMES_TEMPLATE) and not template_renders_tools("{{ messages }}")
    calls = [{"type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]
    out, template_tools = prepare_messages(
        [{"role": "assistant", "content": "", "tool_calls": calls}], [ADD], native=True)
    assert template_tools == [{"type": "function", "function": ADD}]
    assert out[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1, "b": 2}


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return load(tiny_llama[0])


def _accepts(tiny, grammar, text: str) -> bool:
    matcher = GrammarMatcher(GrammarTokenizer.for_tokenizer(tiny.tokenizer), grammar)
    try:
        for token in tiny.tokenizer.encode(text, add_special_tokens=False):
            matcher.advance(token)
    except GrammarError:
        return False
    return matcher.is_accepting()


def test_auto_grammar_allows_text_and_constrains_calls(tiny):
    g = tool_call_grammar(TOOLS, "auto")
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}</tool_call>'
    assert _accepts(tiny, g, "Just text, no < call.")
    assert _accepts(tiny, g, "Checking. " + call + " done")
    assert _accepts(tiny, g, '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": -2}}\n</tool_call>')
    assert not _accepts(tiny, g, '<tool_call>{"name": "add", "arguments": {"a": "1", "b": 2}}</tool_call>')
    assert not _accepts(tiny, g, '<tool_call>{"name": "rm", "arguments": {}}</tool_call>')
    assert not _accepts(tiny, g, '<tool_call>{"name": "get_weather", "arguments": {"city": "x", "unit": "k"}}')
    assert not _accepts(tiny, g, '<tool_call>{"name":"add","arguments":{"a":1,"b":2}}</tool_call>')  # style


def test_required_and_named_grammars_allow_only_a_call(tiny):
    call = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    assert _accepts(tiny, tool_call_grammar(TOOLS, "required"), call)
    assert not _accepts(tiny, tool_call_grammar(TOOLS, "required"), "Sure. " + call)
    assert _accepts(tiny, tool_call_grammar(TOOLS, "add"), call)
    assert not _accepts(tiny, tool_call_grammar(TOOLS, "get_weather"), call)
    with pytest.raises(ValueError, match="names no declared tool"):
        tool_call_schema(TOOLS, "nope")


def test_an_unsatisfiable_budget_ends_with_length_not_a_hang(tiny):
    # (chat_tools itself runs on SmolLM2 in test_constrained_default_model: the tools prompt
    # does not fit this tiny model's 256-token context.)
    processor = GrammarProcessor.for_tokenizer(tiny.tokenizer, tool_call_grammar(TOOLS, "required"))
    r = tiny.generate("the", logits_processor=processor, max_new_tokens=3)
    assert r.finish_reason == "length" and len(r.token_ids) == 3
    assert not processor.matcher.is_accepting()
    assert "<tool_call>".startswith(r.text) or r.text.startswith("<tool_call>")
    assert parse_tool_calls(r.text, TOOLS).tool_calls == []
    # The generic format put the tools into the prompt the model would see.
    assert "<tools>" in tiny.render_chat(*prepare_messages(
        [{"role": "user", "content": "hi"}], TOOLS, native=False))
