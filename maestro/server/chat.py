"""``GET /v1/models`` and ``POST /v1/chat/completions``, OpenAI-compatible.

The request body is validated with pydantic (``extra="allow"``: clients add fields over time)
and translated with :mod:`maestro.messages`' converters into one ``Model`` call, so the
server and :class:`maestro.llm.OpenAIModel` share one idea of the wire format.

Structure is passed down, not faked: ``response_format`` (``json_schema`` or ``json_object``)
becomes ``ModelRequestOptions.response_format`` and ``tool_choice`` naming a tool or
``"required"`` is forwarded, so the embedded engine constrains decoding to the schema.

Streaming sends ``chat.completion.chunk`` frames: a first delta with the role, text deltas,
tool-call deltas (the first for each call carries ``index``, ``id``, ``type`` and the
function name; later ones carry argument fragments), a last chunk with ``finish_reason``,
then, with ``stream_options.include_usage``, a chunk with empty ``choices`` and ``usage``,
then ``data: [DONE]``. When the request offers tools and the model may choose, text is held
back until the model is done: a local model writes a tool call as text, and a client must
not see that text as content as well as a tool call.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from maestro.errors import MaestroError
from maestro.llm.base import Model, ResponseDoneEvent, StreamEvent, TextDeltaEvent
from maestro.messages import (
    Message,
    ModelRequestOptions,
    ModelResponse,
    ToolDefinition,
    Usage,
    from_openai,
    message_to_openai,
)
from maestro.server.errors import APIError, from_maestro, log
from maestro.server.sse import DONE, SSE_HEADERS, frame

#: Names a client may use for the served model besides its own name.
MODEL_ALIASES = ("default", "maestro")


class _Body(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")


class FunctionSpec(_Body):
    name: str = pydantic.Field(min_length=1, max_length=64)
    description: str = ""
    parameters: dict[str, Any] = pydantic.Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    strict: bool | None = None


class ToolSpec(_Body):
    type: Literal["function"] = "function"
    function: FunctionSpec


class NamedToolChoice(_Body):
    type: Literal["function"] = "function"
    function: dict[str, Any]


class JsonSchemaSpec(_Body):
    name: str = "response"
    schema_: dict[str, Any] | None = pydantic.Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    model: str = "default"
    messages: list[dict[str, Any]] = pydantic.Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    temperature: float | None = pydantic.Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = pydantic.Field(default=None, ge=1)
    max_completion_tokens: int | None = pydantic.Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = pydantic.Field(default=1, ge=1)


def parse_body(model_cls: type[pydantic.BaseModel], raw: bytes) -> Any:
    """The request body as ``model_cls``, or a 400 naming the first bad field."""
    if not raw:
        raise APIError(400, "the request body is empty; send a JSON object")
    try:
        return model_cls.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"] if first["type"] != "json_invalid" else "the body is not valid JSON"
        raise APIError(400, f"{where}: {message}" if where else message, param=where) from None


class ChatService:
    """The chat endpoints over one model."""

    def __init__(self, model: Model) -> None:
        self.model = model

    @property
    def names(self) -> tuple[str, ...]:
        return (self.model.model_name, *MODEL_ALIASES)

    async def list_models(self, _request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model.model_name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "maestro",
                    }
                ],
            }
        )

    async def chat_completions(self, request: Request) -> Response:
        body: ChatCompletionRequest = parse_body(ChatCompletionRequest, await request.body())
        if body.model not in self.names:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist; this server serves "
                f"{self.model.model_name!r}",
                param="model",
                code="model_not_found",
            )
        if body.n != 1:
            raise APIError(400, "only n=1 is supported", param="n")
        try:
            messages = from_openai(body.messages)
        except MaestroError as exc:
            raise APIError(400, f"messages: {exc}", param="messages") from exc
        options = request_options(body)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if not body.stream:
            try:
                response = await self.model.request(messages, options)
            except MaestroError as exc:
                raise from_maestro(exc) from exc
            return JSONResponse(completion_body(completion_id, self.model, response))
        return await self._stream(completion_id, messages, options, body)

    async def _stream(
        self,
        completion_id: str,
        messages: list[Message],
        options: ModelRequestOptions,
        body: ChatCompletionRequest,
    ) -> Response:
        events = aiter(self.model.stream(messages, options))
        # Wait for the first event before answering, so an early failure (a bad option, a
        # model that cannot load) is a proper HTTP error rather than an error inside a 200.
        try:
            first = await anext(events)
        except MaestroError as exc:
            raise from_maestro(exc) from exc
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        hold_text = bool(options.tools) and options.tool_choice in (None, "auto")
        chunks = _chunks(
            completion_id, self.model.model_name, first, events, include_usage, hold_text
        )
        return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)


def request_options(body: ChatCompletionRequest) -> ModelRequestOptions:
    tools = [
        ToolDefinition(
            t.function.name, t.function.description, t.function.parameters, bool(t.function.strict)
        )
        for t in body.tools or []
    ]
    choice: str | None
    if isinstance(body.tool_choice, NamedToolChoice):
        choice = str(body.tool_choice.function.get("name", ""))
        if choice not in {t.name for t in tools}:
            raise APIError(
                400, f"tool_choice names {choice!r}, which is not in tools", param="tool_choice"
            )
    else:
        choice = body.tool_choice
    if choice == "required" and not tools:
        raise APIError(400, "tool_choice 'required' needs tools", param="tool_choice")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return ModelRequestOptions(
        temperature=body.temperature,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        response_format=response_schema(body.response_format),
        tools=tools,
        tool_choice=choice,
        stop=stop,
        seed=body.seed,
    )


def response_schema(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    """The JSON schema the answer must satisfy, from an OpenAI ``response_format``."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise APIError(
            400,
            "response_format of type json_schema needs json_schema.schema",
            param="response_format.json_schema",
        )
    return fmt.json_schema.schema_


def usage_body(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }


def completion_body(completion_id: str, model: Model, response: ModelResponse) -> dict[str, Any]:
    message = message_to_openai(response.message)
    message.pop("name", None)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model.model_name,
        "choices": [{"index": 0, "message": message, "finish_reason": response.finish_reason}],
        "usage": usage_body(response.usage),
    }


async def _chunks(
    completion_id: str,
    model_name: str,
    first: StreamEvent,
    events: AsyncIterator[StreamEvent],
    include_usage: bool,
    hold_text: bool,
) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return frame(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    yield chunk({"role": "assistant", "content": ""})
    held: list[str] = []
    streamed_calls: set[int] = set()
    event: StreamEvent | None = first
    try:
        while event is not None:
            if isinstance(event, TextDeltaEvent):
                if hold_text:
                    held.append(event.text)
                elif event.text:
                    yield chunk({"content": event.text})
            elif isinstance(event, ResponseDoneEvent):
                response = event.response
                calls = response.message.tool_calls
                if not calls and held:
                    yield chunk({"content": "".join(held)})
                for index, call in enumerate(calls):
                    if index not in streamed_calls:  # the model gave it whole, at the end
                        yield chunk(
                            {
                                "tool_calls": [
                                    _call_delta(
                                        index, call.id, call.name, json.dumps(call.arguments)
                                    )
                                ]
                            }
                        )
                yield chunk({}, response.finish_reason)
                if include_usage:
                    yield frame(
                        {
                            "id": completion_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model_name,
                            "choices": [],
                            "usage": usage_body(response.usage),
                        }
                    )
                break
            else:  # a tool-call fragment
                streamed_calls.add(event.index)
                yield chunk(
                    {
                        "tool_calls": [
                            _call_delta(event.index, event.id, event.name, event.arguments_delta)
                        ]
                    }
                )
            event = await anext(events, None)
    except MaestroError as exc:
        # Headers are sent; the SDK raises an APIError for an ``error`` object in the stream.
        log.warning("chat stream %s failed: %s", completion_id, exc)
        yield frame(from_maestro(exc).body())
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
    yield DONE


def _call_delta(index: int, call_id: str | None, name: str | None, args: str) -> dict[str, Any]:
    delta: dict[str, Any] = {"index": index}
    if call_id is not None:
        delta["id"] = call_id
        delta["type"] = "function"
    function: dict[str, Any] = {"arguments": args}
    if name is not None:
        function["name"] = name
    delta["function"] = function
    return delta
