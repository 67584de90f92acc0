"""The OpenAI-compatible endpoints, exercised with the real ``openai`` client over uvicorn."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import pydantic
import pytest

from maestro.errors import ModelHTTPError
from maestro.llm.base import StreamEvent, TextDeltaEvent
from maestro.messages import (
    Message,
    ModelRequestOptions,
    ModelResponse,
    ToolResultMessage,
    UserMessage,
)
from maestro.server import create_app
from maestro.testing import FunctionModel, ScriptedModel, tool_call
from tests.maestro.server.conftest import LiveServer

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def assistant(messages: list[Message], options: ModelRequestOptions) -> Any:
    """Echo for text; a weather tool call when offered the tool; JSON when a schema is set."""
    last = messages[-1]
    if options.response_format is not None:
        return json.dumps({"name": "Ada", "age": 36})
    if isinstance(last, ToolResultMessage):
        return f"The tool said: {last.content}"
    if options.tools and options.tool_choice != "none":
        return tool_call("get_weather", {"city": "Paris"}, id="call_weather_1")
    assert isinstance(last, UserMessage)
    return f"You said: {last.content}"


def client_for(live: LiveServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=live.base_url, api_key=key, max_retries=0, timeout=20)


@pytest.fixture
def model() -> FunctionModel:
    return FunctionModel(assistant, model_name="test-model")


@pytest.fixture
def client(serve: Callable[..., LiveServer], model: FunctionModel) -> openai.OpenAI:
    return client_for(serve(create_app(model)))


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["test-model"]


def test_chat_completion(client: openai.OpenAI, model: FunctionModel) -> None:
    out = client.chat.completions.create(
        model="test-model",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        max_tokens=7,
        temperature=0.5,
        stop="END",
        seed=3,
    )
    assert out.object == "chat.completion"
    assert out.choices[0].message.content == "You said: hi"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.completion_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    options = model.last_request.options
    assert (options.max_tokens, options.temperature, options.stop, options.seed) == (
        7,
        0.5,
        ["END"],
        3,
    )
    assert [m.role for m in model.last_request.messages] == ["system", "user"]


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: one two three"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # really streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_streaming_without_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_tool_call_round_trip(client: openai.OpenAI, model: FunctionModel) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(
        model="test-model", messages=messages, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id == "call_weather_1"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    offered = model.last_request.options.tools
    assert [t.name for t in offered] == ["get_weather"]
    assert offered[0].parameters["required"] == ["city"]

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    second = client.chat.completions.create(
        model="test-model", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].message.content == "The tool said: sunny, 21 C"


def test_named_tool_choice_is_forwarded(client: openai.OpenAI, model: FunctionModel) -> None:
    client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "x"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert model.last_request.options.tool_choice == "get_weather"


def test_streamed_tool_call_deltas(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "Weather?"}],
            tools=[WEATHER_TOOL],
            stream=True,
        )
    )
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert len(deltas) >= 2  # the name first, then argument fragments
    assert deltas[0].id == "call_weather_1" and deltas[0].type == "function"
    assert deltas[0].function is not None and deltas[0].function.name == "get_weather"
    assert all(d.id is None for d in deltas[1:])
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)


def test_stream_helper_parses_tool_arguments(client: openai.OpenAI) -> None:
    class GetWeather(pydantic.BaseModel):
        city: str

    with client.chat.completions.stream(
        model="test-model",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[openai.pydantic_function_tool(GetWeather, name="get_weather")],
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls and calls[0].function.parsed_arguments == GetWeather(city="Paris")


def test_parse_with_pydantic_schema(client: openai.OpenAI, model: FunctionModel) -> None:
    class Person(pydantic.BaseModel):
        name: str
        age: int

    out = client.chat.completions.parse(
        model="test-model",
        messages=[{"role": "user", "content": "Who wrote the first program?"}],
        response_format=Person,
    )
    assert out.choices[0].message.parsed == Person(name="Ada", age=36)
    schema = model.last_request.options.response_format
    assert schema is not None and set(schema["properties"]) == {"name", "age"}


def test_json_object_response_format(client: openai.OpenAI, model: FunctionModel) -> None:
    out = client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "JSON please"}],
        response_format={"type": "json_object"},
    )
    assert json.loads(out.choices[0].message.content or "") == {"name": "Ada", "age": 36}
    assert model.last_request.options.response_format == {"type": "object"}


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    assert "gpt-9" in info.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "default", "messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"model": "default", "messages": []}, "messages"),
        ({"model": "default", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        (
            {
                "model": "default",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
            },
            "response_format.json_schema",
        ),
        (
            {
                "model": "default",
                "messages": [{"role": "user", "content": "x"}],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice",
        ),
    ],
)
def test_bad_requests_are_bad_request_errors(
    client: openai.OpenAI, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body=body, cast_to=httpx.Response)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]


def test_raw_http_errors_have_openai_shape(serve: Callable[..., LiveServer]) -> None:
    live = serve(create_app(FunctionModel(assistant), max_body_bytes=2048))
    with httpx.Client(base_url=live.base_url) as http:
        not_json = http.post("/chat/completions", content=b"{nope")
        assert not_json.status_code == 400
        assert set(not_json.json()["error"]) == {"message", "type", "param", "code"}
        big = http.post(
            "/chat/completions",
            json={"model": "default", "messages": [{"role": "user", "content": "x" * 5000}]},
        )
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"

        def chunked() -> Any:
            for _ in range(10):
                yield b" " * 500

        streamed = http.post("/chat/completions", content=chunked())
        assert streamed.status_code == 413
        missing = http.get("/nowhere")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        wrong_method = http.get("/chat/completions")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["type"] == "invalid_request_error"


def test_model_failure_maps_to_server_error(serve: Callable[..., LiveServer]) -> None:
    def broken(_m: list[Message], _o: ModelRequestOptions) -> ModelResponse:
        raise ModelHTTPError(503, "upstream overloaded")

    client = client_for(serve(create_app(FunctionModel(broken))))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502
    assert info.value.code == "model_error"
    # Streaming fails before the first byte, so it too is an HTTP error, not a broken stream.
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "x"}], stream=True
        )


class FailsMidStream(FunctionModel):
    """Streams one delta, then the provider fails."""

    async def stream(
        self, messages: list[Message], options: ModelRequestOptions
    ) -> AsyncIterator[StreamEvent]:
        yield TextDeltaEvent("partial ")
        raise ModelHTTPError(500, "connection to the upstream model lost")


def test_failure_mid_stream_reaches_the_client(serve: Callable[..., LiveServer]) -> None:
    client = client_for(serve(create_app(FailsMidStream(assistant))))
    stream = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIError, match="upstream model lost"):
        for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(received) == "partial "


def test_scripted_model_runs_out_mid_conversation(serve: Callable[..., LiveServer]) -> None:
    client = client_for(serve(create_app(ScriptedModel(["only once"]))))
    ok = client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "x"}]
    )
    assert ok.choices[0].message.content == "only once"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "x"}]
        )
