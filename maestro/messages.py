"""Chat messages, model responses and usage: the data every model and the loop exchange.

Plain dataclasses (cheap to build, easy to pattern-match); JSON crosses the boundary only in
``to_openai`` / ``from_openai`` / ``response_from_openai``, the one place that knows the
OpenAI chat-completions wire format. Both :class:`maestro.llm.openai.OpenAIModel` and the
OpenAI-compatible server use these converters, so the two can never drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from maestro.errors import UnexpectedModelBehavior, UserError


@dataclass(slots=True)
class SystemMessage:
    content: str
    role: Literal["system"] = "system"


@dataclass(slots=True)
class UserMessage:
    content: str
    role: Literal["user"] = "user"


@dataclass(slots=True)
class ToolCall:
    """One function call the model asked for. ``arguments`` is already-parsed JSON."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class AssistantMessage:
    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    role: Literal["assistant"] = "assistant"


@dataclass(slots=True)
class ToolResultMessage:
    """The result of a tool call, sent back to the model. ``is_error`` marks retry prompts."""

    tool_call_id: str
    name: str
    content: str
    is_error: bool = False
    role: Literal["tool"] = "tool"


Message = SystemMessage | UserMessage | AssistantMessage | ToolResultMessage


@dataclass(slots=True)
class Usage:
    """What calls cost. Adds up with ``+``; ``requests`` counts model calls."""

    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.requests + other.requests,
            self.cost_usd + other.cost_usd,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "requests": self.requests,
            "cost_usd": self.cost_usd,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        return cls(
            int(data.get("input_tokens", 0)),
            int(data.get("output_tokens", 0)),
            int(data.get("requests", 0)),
            float(data.get("cost_usd", 0.0)),
        )


@dataclass(slots=True)
class ToolDefinition:
    """What the model is told about a tool: name, description and JSON schema of arguments."""

    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool = False

    def to_openai(self) -> dict[str, Any]:
        fn: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }
        if self.strict:
            fn["strict"] = True
        return {"type": "function", "function": fn}


ToolChoice = Literal["auto", "none", "required"] | str
"""``"auto"``, ``"none"``, ``"required"`` or the name of one tool the model must call."""


@dataclass(slots=True)
class ModelRequestOptions:
    """Per-request settings. ``response_format`` is a JSON schema the answer must satisfy.

    Models that can constrain decoding (the embedded engine, OpenAI ``json_schema``) pass it
    down; the loop still validates what comes back, so a model that ignores it is caught.
    """

    temperature: float | None = None
    max_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[ToolDefinition] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


@dataclass(slots=True)
class ModelResponse:
    message: AssistantMessage
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"
    model_name: str = ""

    @property
    def text(self) -> str:
        return self.message.content or ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "message": message_to_openai(self.message),
            "usage": self.usage.to_dict(),
            "finish_reason": self.finish_reason,
            "model_name": self.model_name,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelResponse:
        msg = message_from_openai(data["message"])
        assert isinstance(msg, AssistantMessage)
        usage = Usage.from_dict(data.get("usage", {}))
        return cls(msg, usage, data["finish_reason"], data["model_name"])


def message_to_openai(message: Message) -> dict[str, Any]:
    """One message in the OpenAI chat-completions format."""
    if isinstance(message, SystemMessage | UserMessage):
        return {"role": message.role, "content": message.content}
    if isinstance(message, ToolResultMessage):
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id,
            "name": message.name,
            "content": message.content,
        }
    out: dict[str, Any] = {"role": "assistant", "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for call in message.tool_calls
        ]
    return out


def to_openai(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages in the OpenAI chat-completions format (for requests and the server)."""
    return [message_to_openai(m) for m in messages]


def parse_tool_arguments(raw: str | dict[str, Any] | None, tool_name: str) -> dict[str, Any]:
    """Tool-call arguments as a dict; raises UnexpectedModelBehavior on non-object JSON."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UnexpectedModelBehavior(
            f"arguments for tool {tool_name!r} are not valid JSON: {exc}", body=raw
        ) from exc
    if not isinstance(value, dict):
        raise UnexpectedModelBehavior(
            f"arguments for tool {tool_name!r} must be a JSON object", body=raw
        )
    return value


def _text_content(content: Any) -> str:
    # The OpenAI format allows content as a list of parts; we keep the text parts.
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise UserError(f"unsupported message content: {type(content).__name__}")


def message_from_openai(data: dict[str, Any]) -> Message:
    """One OpenAI-format message as a Maestro message. Raises UserError on a bad role."""
    role = data.get("role")
    if role in ("system", "developer"):
        return SystemMessage(_text_content(data.get("content")))
    if role == "user":
        return UserMessage(_text_content(data.get("content")))
    if role == "tool":
        return ToolResultMessage(
            tool_call_id=str(data.get("tool_call_id", "")),
            name=str(data.get("name", "")),
            content=_text_content(data.get("content")),
        )
    if role == "assistant":
        calls = []
        for raw in data.get("tool_calls") or []:
            fn = raw.get("function", {})
            name = str(fn.get("name", ""))
            calls.append(
                ToolCall(
                    str(raw.get("id", "")), name, parse_tool_arguments(fn.get("arguments"), name)
                )
            )
        content = data.get("content")
        return AssistantMessage(None if content is None else _text_content(content), calls)
    raise UserError(f"unknown message role {role!r}; expected system, user, assistant or tool")


def from_openai(messages: list[dict[str, Any]]) -> list[Message]:
    """OpenAI-format messages (e.g. a server request body) as Maestro messages."""
    return [message_from_openai(m) for m in messages]


def response_from_openai(body: dict[str, Any]) -> ModelResponse:
    """A non-streaming chat-completions response body as a ModelResponse."""
    try:
        choice = body["choices"][0]
        message = message_from_openai({"role": "assistant", **choice["message"]})
    except (KeyError, IndexError, TypeError) as exc:
        raise UnexpectedModelBehavior(
            "response has no choices[0].message", body=json.dumps(body)[:2000]
        ) from exc
    assert isinstance(message, AssistantMessage)
    usage_raw = body.get("usage") or {}
    usage = Usage(
        int(usage_raw.get("prompt_tokens", 0)),
        int(usage_raw.get("completion_tokens", 0)),
        1,
    )
    finish = str(choice.get("finish_reason") or "stop")
    return ModelResponse(message, usage, finish, str(body.get("model", "")))
