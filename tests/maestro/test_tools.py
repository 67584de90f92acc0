"""@tool: schema and description from the signature and docstring, validation, threads,
timeouts, ToolContext, and Tool.from_schema for tools built at run time."""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

import anyio
import pytest
from pydantic import BaseModel

from maestro.errors import ToolError, ToolRetry, UserError
from maestro.tool import Tool, ToolContext, result_to_text, tool

CTX = ToolContext(run_id="r", step_id="tool:s1", idempotency_key="k")


class Point(BaseModel):
    x: float
    y: float


@tool
def distance(a: Point, b: Point, unit: Literal["m", "km"] = "m") -> float:
    """Distance between two points.

    Longer explanation that is not part of the summary.

    Args:
        a: the first point
        b: the second point
        unit: unit of the result,
            metres or kilometres
    """
    d = ((a.x - b.x) ** 2 + (a.y - b.y) ** 2) ** 0.5
    return d / 1000 if unit == "km" else d


def test_schema_and_description_come_from_signature_and_docstring() -> None:
    assert distance.name == "distance"
    assert distance.description.startswith("Distance between two points.")
    assert "Args" not in distance.description
    schema = distance.parameters
    assert schema["required"] == ["a", "b"]
    assert schema["properties"]["unit"]["enum"] == ["m", "km"]
    assert schema["properties"]["unit"]["description"] == "unit of the result, metres or kilometres"
    assert schema["properties"]["a"]["description"] == "the first point"
    assert "Point" in str(schema["$defs"])
    assert schema["additionalProperties"] is False
    definition = distance.definition.to_openai()
    assert definition["function"]["name"] == "distance"


async def test_arguments_are_validated_and_coerced() -> None:
    value = await distance.call({"a": {"x": 0, "y": 0}, "b": {"x": 3, "y": 4}}, CTX)
    assert value == 5.0
    with pytest.raises(ToolRetry, match=r"b\.y: Field required"):
        await distance.call({"a": {"x": 0, "y": 0}, "b": {"x": 3}}, CTX)
    with pytest.raises(ToolRetry, match="Extra inputs are not permitted"):
        await distance.call({"a": {"x": 0, "y": 0}, "b": {"x": 3, "y": 4}, "c": 1}, CTX)


async def test_sync_tools_run_in_a_worker_thread() -> None:
    main = threading.get_ident()

    @tool
    def where() -> int:
        """Which thread."""
        return threading.get_ident()

    assert await where.call({}, CTX) != main


async def test_context_is_passed_and_hidden_from_the_schema() -> None:
    @tool(side_effects=True)
    async def pay(ctx: ToolContext, amount: int) -> str:
        """Pay."""
        return f"{ctx.idempotency_key}:{amount}"

    assert pay.takes_ctx and pay.side_effects
    assert list(pay.parameters["properties"]) == ["amount"]
    assert await pay.call({"amount": 3}, CTX) == "k:3"


async def test_timeout_and_failures_become_tool_errors() -> None:
    @tool(timeout=0.05)
    async def slow() -> str:
        """Slow."""
        await anyio.sleep(5)
        return "late"

    @tool(timeout=0.05)
    def slow_sync() -> str:
        """Slow sync."""
        time.sleep(0.5)
        return "late"

    @tool
    def broken() -> str:
        """Broken."""
        raise KeyError("missing")

    started = time.monotonic()
    with pytest.raises(ToolError, match="timed out"):
        await slow.call({}, CTX)
    with pytest.raises(ToolError, match="timed out"):
        await slow_sync.call({}, CTX)
    assert time.monotonic() - started < 0.4  # the sync thread was abandoned, not awaited
    with pytest.raises(ToolError, match="KeyError") as info:
        await broken.call({}, CTX)
    assert isinstance(info.value.__cause__, KeyError)


def test_bad_tool_definitions_are_user_errors() -> None:
    with pytest.raises(UserError, match="named parameter"):

        @tool
        def variadic(*args: int) -> int:
            """Bad."""
            return 0

    with pytest.raises(UserError, match="must match"):

        @tool(name="has space")
        def fine() -> None:
            """Fine."""

    with pytest.raises(UserError, match="must come first"):

        @tool
        def late_ctx(x: int, ctx: ToolContext) -> None:
            """Bad."""


async def test_from_schema_checks_required_types_and_unknown_keys() -> None:
    received: list[dict[str, Any]] = []

    async def remote(args: dict[str, Any]) -> str:
        received.append(args)
        return "ok"

    schema = {
        "type": "object",
        "properties": {"q": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["q"],
        "additionalProperties": False,
    }
    search = Tool.from_schema("search", "Search things.", schema, remote)
    assert await search.call({"q": "x", "limit": 2}, CTX) == "ok"
    assert received == [{"q": "x", "limit": 2}]
    with pytest.raises(ToolRetry, match="missing required argument 'q'"):
        await search.call({"limit": 2}, CTX)
    with pytest.raises(ToolRetry, match="'limit' must be of type integer"):
        await search.call({"q": "x", "limit": True}, CTX)
    with pytest.raises(ToolRetry, match="unknown argument 'z'"):
        await search.call({"q": "x", "z": 1}, CTX)
    assert search.definition.parameters is schema


def test_results_become_text() -> None:
    assert result_to_text("plain") == "plain"
    assert result_to_text({"a": 1}) == '{"a":1}'
    assert result_to_text(Point(x=1, y=2)) == '{"x":1.0,"y":2.0}'


async def test_a_user_error_inside_a_tool_fails_the_call_not_the_process() -> None:
    @tool
    def needs_extra() -> str:
        """Needs an optional package."""
        raise UserError("install the pdf extra")

    with pytest.raises(ToolError, match="install the pdf extra") as info:
        await needs_extra.call({}, CTX)
    assert isinstance(info.value.__cause__, UserError)
