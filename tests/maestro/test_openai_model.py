"""OpenAIModel against an in-process fake server (httpx.MockTransport): streaming, tool calls
split across SSE chunks, Retry-After honoured, 5xx retried then typed, timeouts typed."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from maestro.errors import ModelHTTPError, ModelTimeoutError, UserError
from maestro.llm.base import ResponseDoneEvent, TextDeltaEvent, ToolCallDeltaEvent
from maestro.llm.openai import OpenAIModel, parse_retry_after
from maestro.messages import ModelRequestOptions, ToolDefinition, UserMessage

MESSAGES = [UserMessage("hi")]


def sse(*chunks: dict[str, Any]) -> bytes:
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return body.encode()


def completion(content: str = "hello") -> dict[str, Any]:
    return {
        "id": "c1",
        "model": "fake-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2},
    }


def make_model(handler: Any, **kwargs: Any) -> OpenAIModel:
    kwargs.setdefault("max_backoff_seconds", 0.01)
    return OpenAIModel(
        "fake-model",
        base_url="http://fake/v1",
        api_key="k",
        transport=httpx.MockTransport(handler),
        **kwargs,
    )


async def test_request_sends_tools_schema_and_parses_usage() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        assert request.headers["authorization"] == "Bearer k"
        return httpx.Response(200, json=completion("ok"))

    model = make_model(handler)
    tool = ToolDefinition("add", "Add.", {"type": "object", "properties": {}})
    options = ModelRequestOptions(
        tools=[tool], tool_choice="add", response_format={"title": "Out", "type": "object"}
    )
    response = await model.request(MESSAGES, options)
    assert response.text == "ok"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (7, 2)
    body = seen[0]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert body["tools"][0]["function"]["name"] == "add"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "Out"


async def test_streaming_text_and_tool_calls_split_across_chunks() -> None:
    chunks = [
        {
            "model": "fake-model",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let "}}],
        },
        {"choices": [{"index": 0, "delta": {"content": "me add."}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_a",
                                "type": "function",
                                "function": {"name": "add", "arguments": '{"a": '},
                            }
                        ]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '1, "b"'}}]},
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 1,
                                "id": "call_b",
                                "type": "function",
                                "function": {"name": "mul", "arguments": '{"x": 2}'},
                            },
                            {"index": 0, "function": {"arguments": ": 2}"}},
                        ]
                    },
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 9}},
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        return httpx.Response(
            200, content=sse(*chunks), headers={"content-type": "text/event-stream"}
        )

    events = [e async for e in make_model(handler).stream(MESSAGES, ModelRequestOptions())]
    texts = [e.text for e in events if isinstance(e, TextDeltaEvent)]
    assert texts == ["Let ", "me add."]
    assert sum(isinstance(e, ToolCallDeltaEvent) for e in events) == 4
    done = events[-1]
    assert isinstance(done, ResponseDoneEvent)
    message = done.response.message
    assert message.content == "Let me add."
    assert [(c.id, c.name, c.arguments) for c in message.tool_calls] == [
        ("call_a", "add", {"a": 1, "b": 2}),
        ("call_b", "mul", {"x": 2}),
    ]
    assert done.response.finish_reason == "tool_calls"
    assert done.response.usage.input_tokens == 11


async def test_429_with_retry_after_is_retried_after_the_asked_delay() -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx.Response(429, text="slow down", headers={"retry-after": "0.2"})
        return httpx.Response(200, json=completion("after wait"))

    response = await make_model(handler).request(MESSAGES, ModelRequestOptions())
    assert response.text == "after wait"
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 0.19  # waited what Retry-After asked, not the tiny backoff


async def test_retry_after_longer_than_total_bound_fails_at_once() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(429, text="quota", headers={"retry-after": "3600"})

    started = time.monotonic()
    with pytest.raises(ModelHTTPError) as info:
        await make_model(handler, max_total_seconds=5).request(MESSAGES, ModelRequestOptions())
    assert info.value.status == 429 and calls == 1
    assert time.monotonic() - started < 1.0


async def test_500_is_retried_then_surfaces_as_typed_error() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(500, text="boom")

    with pytest.raises(ModelHTTPError) as info:
        await make_model(handler, max_retries=2).request(MESSAGES, ModelRequestOptions())
    assert calls == 3
    assert info.value.status == 500 and info.value.body == "boom"


async def test_400_is_not_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(400, json={"error": "bad"})

    with pytest.raises(ModelHTTPError) as info:
        await make_model(handler).request(MESSAGES, ModelRequestOptions())
    assert calls == 1 and info.value.status == 400


async def test_timeout_surfaces_as_typed_error() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ReadTimeout("no answer", request=request)

    with pytest.raises(ModelTimeoutError):
        await make_model(handler, max_retries=1).request(MESSAGES, ModelRequestOptions())
    assert calls == 2


async def test_stream_error_status_is_typed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="overloaded")

    model = make_model(handler, max_retries=1)
    with pytest.raises(ModelHTTPError) as info:
        async for _ in model.stream(MESSAGES, ModelRequestOptions()):
            pass
    assert info.value.status == 503


async def test_real_endpoint_is_blocked_in_tests() -> None:
    model = OpenAIModel("gpt-x", base_url="http://example.invalid/v1", api_key="k")
    with pytest.raises(UserError, match="blocked"):
        await model.request(MESSAGES, ModelRequestOptions())


def test_parse_retry_after_variants() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": "2"})) == 2.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "150"})) == 0.15
    assert parse_retry_after(httpx.Headers({})) is None
    date = parse_retry_after(httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert date == 0.0


async def test_agent_loop_through_a_fake_openai_server() -> None:
    """Plan (json_schema, non-streamed) → tool → draft (SSE) → judge, all over HTTP."""
    from maestro.agent import Agent
    from maestro.requirements import Requirement
    from maestro.tool import tool

    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        fmt = (body.get("response_format") or {}).get("json_schema", {}).get("name")
        if fmt == "Plan":
            plan = {
                "steps": [
                    {"id": "s1", "tool": "multiply", "args": {"a": 17, "b": 23}, "depends_on": []}
                ],
                "rationale": "exact",
            }
            return httpx.Response(200, json=completion(json.dumps(plan)))
        if fmt == "JudgeVerdict":
            return httpx.Response(200, json=completion('{"score": 1.0, "reason": "polite"}'))
        assert body.get("stream") is True
        chunks = [
            {"choices": [{"index": 0, "delta": {"content": part}}]}
            for part in ("17 × 23 = ", "391, ", "kindly computed.")
        ]
        return httpx.Response(
            200, content=sse(*chunks), headers={"content-type": "text/event-stream"}
        )

    agent = Agent(make_model(handler), tools=[multiply], requirements=[Requirement("polite")])
    result = await agent.run("17 times 23?")
    assert result.answer == "17 × 23 = 391, kindly computed."
    assert result.passed and result.data_sources[0]["excerpt"] == "391"
    plan_schema = bodies[0]["response_format"]["json_schema"]["schema"]
    variants = plan_schema["$defs"]["PlanStep"]["anyOf"]
    assert variants[0]["properties"]["tool"] == {"const": "multiply"}
    assert "391" in bodies[1]["messages"][-1]["content"]  # tool results reach the draft
