"""LocalModel: plumbing with a fake engine (no torch), and one end-to-end run of the real
default model (SmolLM2-135M through the embedded engine), marked slow."""

from __future__ import annotations

import ast
import asyncio
import operator
import threading
import time
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from maestro.agent import Agent
from maestro.budget import Budget
from maestro.errors import UserError
from maestro.events import RunFinished, ToolCallFinished, ToolCallStarted
from maestro.llm.base import ResponseDoneEvent, TextDeltaEvent
from maestro.llm.local import LocalModel, forced_schema, parse_tool_calls
from maestro.messages import (
    AssistantMessage,
    ModelRequestOptions,
    ToolCall,
    ToolDefinition,
    ToolResultMessage,
    UserMessage,
)
from maestro.requirements import Requirement
from maestro.testing import allow_real_models
from maestro.tool import tool

ADD = ToolDefinition("add", "Add.", {"type": "object", "properties": {"a": {"type": "integer"}}})


class FakeEngine:
    """Stands in for model.LanguageModel: scripted outputs, streamed word by word."""

    def __init__(self, outputs: Sequence[str], delay: float = 0.0) -> None:
        self.outputs = list(outputs)
        self.delay = delay
        self.seen: list[dict[str, Any]] = []
        self.pieces_emitted = 0

    def chat_stream(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Any = None,
        *,
        logits_processor: Any = None,
        result: list[Any] | None = None,
        **sampling: Any,
    ) -> Iterator[str]:
        self.seen.append({"messages": messages, "tools": tools, "sampling": sampling})
        text = self.outputs.pop(0)
        pieces = text.split(" ")
        for i, piece in enumerate(pieces):
            if self.delay:
                time.sleep(self.delay)
            self.pieces_emitted += 1
            yield piece if i == 0 else " " + piece
        if result is not None:
            usage = SimpleNamespace(prompt_tokens=10, completion_tokens=len(pieces))
            result.append(SimpleNamespace(text=text, usage=usage, finish_reason="stop"))


async def test_stream_and_request_with_a_fake_engine() -> None:
    engine = FakeEngine(["The capital is Paris.", "again"])
    model = LocalModel(engine=engine, constrained=False)
    events = [e async for e in model.stream([UserMessage("capital?")], ModelRequestOptions())]
    assert (
        "".join(e.text for e in events if isinstance(e, TextDeltaEvent)) == "The capital is Paris."
    )
    done = events[-1]
    assert isinstance(done, ResponseDoneEvent)
    assert done.response.usage.input_tokens == 10 and done.response.usage.requests == 1
    response = await model.request(
        [UserMessage("x")], ModelRequestOptions(max_tokens=7, temperature=0.5)
    )
    assert response.text == "again"
    assert engine.seen[1]["sampling"]["max_new_tokens"] == 7
    assert engine.seen[1]["sampling"]["temperature"] == 0.5


async def test_tool_calls_are_parsed_and_templates_get_object_arguments() -> None:
    engine = FakeEngine(['<tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call>'])
    model = LocalModel(engine=engine, constrained=False)
    history = [
        UserMessage("add"),
        AssistantMessage(None, [ToolCall("c0", "add", {"a": 1})]),
        ToolResultMessage("c0", "add", "1"),
    ]
    response = await model.request(history, ModelRequestOptions(tools=[ADD]))
    assert response.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in response.message.tool_calls] == [("add", {"a": 2})]
    sent = engine.seen[0]
    assert sent["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert sent["tools"][0]["function"]["name"] == "add"


async def test_forced_tool_output_is_the_arguments_object() -> None:
    model = LocalModel(engine=FakeEngine(['{"a": 5}']), constrained=False)
    response = await model.request(
        [UserMessage("x")], ModelRequestOptions(tools=[ADD], tool_choice="add")
    )
    assert response.message.tool_calls[0].arguments == {"a": 5}


def test_forced_schema_and_text_tool_call_parsing() -> None:
    schema, name = forced_schema(ModelRequestOptions(tools=[ADD], tool_choice="add"))
    assert name == "add" and schema == ADD.parameters
    schema, name = forced_schema(ModelRequestOptions(tools=[ADD], tool_choice="required"))
    assert (
        name is None
        and schema is not None
        and schema["anyOf"][0]["properties"]["name"] == {"const": "add"}
    )
    assert forced_schema(ModelRequestOptions(response_format={"type": "object"})) == (
        {"type": "object"},
        None,
    )
    with pytest.raises(UserError):
        forced_schema(ModelRequestOptions(tools=[ADD], tool_choice="mul"))
    assert parse_tool_calls('{"name": "add", "arguments": {"a": 1}}', [ADD])[0].arguments == {
        "a": 1
    }
    assert parse_tool_calls('{"name": "other", "arguments": {}}', [ADD]) == []
    assert parse_tool_calls("no call here", [ADD]) == []


async def test_cancelling_stops_generation_within_a_token() -> None:
    engine = FakeEngine([" ".join(["w"] * 1000)], delay=0.005)
    model = LocalModel(engine=engine, constrained=False)
    task = asyncio.create_task(model.request([UserMessage("long")], ModelRequestOptions()))
    while engine.pieces_emitted < 5:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    stopped_at = engine.pieces_emitted
    await asyncio.sleep(0.1)
    assert engine.pieces_emitted == stopped_at < 200
    assert threading.active_count() < 50


def test_load_options_reach_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    import model

    seen: dict[str, Any] = {}
    monkeypatch.setattr(model, "load", lambda name, **kw: seen.update(kw, name=name) or "engine")
    lm = LocalModel("smollm2-135m-instruct", quantize="int4", kv_dtype="float16")
    with allow_real_models():
        assert lm.load_now() == "engine"
    assert seen["name"] == "smollm2-135m-instruct"
    assert (seen["quantize"], seen["kv_dtype"]) == ("int4", "float16")


async def test_real_engine_is_blocked_in_tests() -> None:
    with pytest.raises(UserError, match="blocked"):
        await LocalModel().request([UserMessage("x")], ModelRequestOptions())


# --- end to end on the real default model -------------------------------------------------------

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    raise ValueError("only + - * / on numbers")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / and parentheses, exactly.

    Args:
        expression: the expression, e.g. "17 * 23"
    """
    from maestro.errors import ToolRetry

    try:
        value = _evaluate(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        raise ToolRetry(
            f"cannot evaluate {expression!r}: {exc}. Send only numbers and + - * /."
        ) from exc
    return str(int(value) if float(value).is_integer() else value)


def _default_model_available() -> str | None:
    try:
        from model.registry import list_cached
    except ImportError as exc:
        return f"the engine is not importable yet: {exc}"
    if not any(c.name == "smollm2-135m-instruct" for c in list_cached()):
        return "the default model is not pulled (maestro model pull smollm2-135m-instruct)"
    return None


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.timeout(900)
async def test_default_model_runs_the_loop_end_to_end() -> None:
    reason = _default_model_available()
    if reason:
        pytest.skip(reason)
    requirement = Requirement("the answer states the product 391", check=lambda a: "391" in a)
    budget = Budget.of("low", fix_rounds=1, max_model_calls=10, max_wall_seconds=600)
    with allow_real_models():
        agent = Agent(
            LocalModel(max_new_tokens=96),
            tools=[calculator],
            requirements=[requirement],
            budget=budget,
        )
        events = [e async for e in agent.run_stream("What is 17 * 23? Use the calculator.")]
    finished = events[-1]
    assert isinstance(finished, RunFinished)
    assert finished.status == "completed", finished.result.get("error")
    result = finished.result
    # Every tool call that reached the tool passed validation against its schema.
    outcomes = {e.step_key: e for e in events if isinstance(e, ToolCallFinished)}
    for started in (e for e in events if isinstance(e, ToolCallStarted)):
        finished_call = outcomes[started.step_key]
        if finished_call.error is None:
            calculator.validate_args(started.args)
    # The report is honest: it passes exactly when the check holds for the returned answer.
    assert result["report"]["passed"] == ("391" in result["answer"])
    print(
        "\nanswer:",
        result["answer"][:200],
        "| report:",
        result["report"]["summary"],
        "| usage:",
        result["usage"],
        "| finish:",
        finished.finish_reason,
    )
