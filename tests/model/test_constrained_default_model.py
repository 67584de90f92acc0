# ruff: noqa: F811  (pytest fixtures imported by name from _io_fixtures)
"""Tool calls on the real default model (SmolLM2-135M-Instruct): the reason for the grammar.

50 varied requests against four tools, rendered in the generic format (SmolLM2's template has
no tool support). With the call grammar on (``tool_choice="required"``) every reply must parse
and validate against its tool's schema. Without it, the rate is printed, not asserted: it is
what the feature is for.
"""

from __future__ import annotations

import time

import jsonschema
import pytest
import torch

from model.grammar import GrammarProcessor
from model.tool_calls import parse_tool_calls, prepare_messages, tool_call_grammar
from tests.model._io_fixtures import smollm2, smollm2_gguf  # noqa: F401

pytestmark = pytest.mark.slow

TOOLS = [
    {"name": "get_weather", "description": "Weather forecast for a city.",
     "parameters": {"type": "object", "properties": {
         "city": {"type": "string", "maxLength": 24},
         "unit": {"enum": ["celsius", "fahrenheit"]}},
         "required": ["city", "unit"], "additionalProperties": False}},
    {"name": "add", "description": "Add two integers.",
     "parameters": {"type": "object", "properties": {
         "a": {"type": "integer"}, "b": {"type": "integer"}},
         "required": ["a", "b"], "additionalProperties": False}},
    {"name": "send_email", "description": "Send an email.",
     "parameters": {"type": "object", "properties": {
         "to": {"type": "string", "maxLength": 24}, "subject": {"type": "string", "maxLength": 24}},
         "required": ["to", "subject"], "additionalProperties": False}},
    {"name": "search", "description": "Search the web.",
     "parameters": {"type": "object", "properties": {
         "query": {"type": "string", "maxLength": 24}},
         "required": ["query"], "additionalProperties": False}},
]
SCHEMAS = {t["name"]: t["parameters"] for t in TOOLS}

CITIES = ["Paris", "Oslo", "Lima", "Tokyo", "Cairo", "Denver", "Perth", "Quito", "Rome", "Hanoi",
          "Dakar", "Bern", "Seoul"]
PROMPTS = (
    [f"What's the weather in {c} today?" for c in CITIES[:7]]
    + [f"Is it going to rain in {c} tomorrow, in fahrenheit please" for c in CITIES[7:]]
    + [f"What is {a} plus {b}?" for a, b in [(2, 3), (17, 25), (100, 250), (-4, 9), (81, 19),
                                             (7, 7), (1234, 4321), (0, 5), (45, 55), (3, 39)]]
    + [f"Add {a} and {b} for me." for a, b in [(12, 30), (99, 1), (5, 6)]]
    + [f"Email {n}@example.com with the subject '{s}'." for n, s in [
        ("ana", "Lunch"), ("bo", "Report due"), ("cy", "Hello"), ("dee", "Invoice"),
        ("eli", "Meeting moved"), ("fay", "Tickets"), ("gus", "Welcome")]]
    + ["Tell my boss (boss@corp.com) that I am late.", "Send a thank-you note to mum@home.org."]
    + [f"Search the web for {q}." for q in ["the tallest mountain", "python tutorials",
        "cheap flights to Rome", "the capital of Peru", "how to bake bread", "the 2024 Olympics",
        "electric cars", "jazz history", "the speed of light", "best hiking boots"]]
    + ["Who won the football world cup in 2018?", "Find recent news about Mars.",
       "Look up a recipe for pancakes.", "I need the weather for Nairobi in celsius.",
       "What's 15 + 27?"]
)


def _valid(call) -> bool:
    try:
        jsonschema.validate(call.arguments, SCHEMAS[call.name])
    except jsonschema.ValidationError:
        return False
    return True


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core box two OpenMP threads spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run_batch(m, constrained: bool, max_new_tokens: int):
    """Each prompt alone through the prefix cache: the tools prompt is prefilled once, then
    only each user message is (a padded batch of 50 would re-read it 50 times)."""
    msgs = [prepare_messages([{"role": "user", "content": p}], TOOLS, native=False)[0] for p in PROMPTS]
    grammar = tool_call_grammar(TOOLS, "required") if constrained else None
    m.enable_prefix_cache(256 * 2**20, block_size=256)
    results = []
    start = time.perf_counter()
    try:
        for x in msgs:
            proc = GrammarProcessor.for_tokenizer(m.tokenizer, grammar, m.config.vocab_size) if grammar else None
            results.append(m.chat(x, logits_processor=proc, max_new_tokens=max_new_tokens))
    finally:
        m.prefix_cache = None
    seconds = time.perf_counter() - start
    ok = 0
    for r in results:
        calls = parse_tool_calls(r.text, TOOLS).tool_calls
        ok += bool(calls) and all(_valid(c) for c in calls)
    assert results[-1].usage.cached_tokens > 200  # the shared tools prompt was reused
    return ok, results, seconds


def test_every_constrained_reply_is_a_valid_tool_call(smollm2):
    assert len(PROMPTS) == 50 and len(set(PROMPTS)) == 50
    assert smollm2.tool_call_format() == "generic"
    ok, results, seconds = _run_batch(smollm2, constrained=True, max_new_tokens=64)
    bad = [(p, r.text, r.finish_reason) for p, r in zip(PROMPTS, results, strict=True)
           if not (calls := parse_tool_calls(r.text, TOOLS).tool_calls) or not all(map(_valid, calls))]
    print(f"\nconstrained: {ok}/50 valid tool calls ({seconds:.1f} s for the batch)")
    assert not bad, bad
    assert all(r.finish_reason == "stop" for r in results)


def test_unconstrained_rate_is_reported(smollm2):
    ok, results, seconds = _run_batch(smollm2, constrained=False, max_new_tokens=40)
    print(f"\nUNCONSTRAINED: {ok}/50 = {ok / 50:.0%} valid tool calls ({seconds:.1f} s); "
          f"sample reply: {results[0].text[:120]!r}")
    assert 0 <= ok <= 50  # reported, not asserted: small models do this badly without a grammar


def test_chat_tools_auto_mode_on_the_default_model(smollm2):
    r = smollm2.chat_tools([{"role": "user", "content": "What is 17 plus 25?"}], TOOLS,
                           tool_choice="add", max_new_tokens=40)
    assert [c.name for c in r.tool_calls] == ["add"] and _valid(r.tool_calls[0])
    free = smollm2.chat_tools([{"role": "user", "content": "Say hello."}], TOOLS,
                              tool_choice="auto", max_new_tokens=24)
    calls = free.tool_calls
    assert all(_valid(c) for c in calls)  # whatever it chose, a call it opened is valid
    print(f"\nauto mode on 'Say hello.': content={free.content!r} calls={[c.name for c in calls]}")
