"""Test doubles that drive the whole agent loop without a real model — shipped, public.

* :class:`ScriptedModel` replays a list of responses in order and records every request.
* :class:`FunctionModel` answers with a function of ``(messages, options)``.
* Helpers build responses concisely: :func:`tool_call`, :func:`plan_step`, :func:`plan`,
  :func:`judge`.
* :func:`block_real_models` makes any real model (remote HTTP or embedded weights) raise
  instead of running; the test suite calls it once in ``tests/conftest.py``.

A scripted item may be a ``ModelResponse``, a ``str`` (assistant text), a ``ToolCall`` or a
list of them (a tool-calling turn), or a callable ``(messages, options) -> item`` (sync or
async) for answers that depend on the request. Usage is estimated at ~4 characters per token
so budgets behave as with a real model.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from maestro.errors import UnexpectedModelBehavior
from maestro.llm.base import (
    Model,
    Pricing,
    ResponseDoneEvent,
    StreamEvent,
    TextDeltaEvent,
    ToolCallDeltaEvent,
    set_real_models_blocked,
)
from maestro.messages import (
    AssistantMessage,
    Message,
    ModelRequestOptions,
    ModelResponse,
    ToolCall,
    Usage,
)

ScriptItem = ModelResponse | str | ToolCall | list[ToolCall]
ScriptFn = Callable[[list[Message], ModelRequestOptions], ScriptItem | Awaitable[ScriptItem]]


@dataclass(slots=True)
class RecordedRequest:
    messages: list[Message]
    options: ModelRequestOptions


def estimate_tokens(text: str) -> int:
    """Rough token count (~4 chars per token) used by test doubles and budget pre-checks."""
    return len(text) // 4 + 1


def _message_text(message: Message) -> str:
    if isinstance(message, AssistantMessage):
        calls = "".join(f"{c.name}{json.dumps(c.arguments)}" for c in message.tool_calls)
        return (message.content or "") + calls
    return message.content


def _to_response(item: ScriptItem, messages: list[Message], model_name: str) -> ModelResponse:
    if isinstance(item, ModelResponse):
        return item
    if isinstance(item, str):
        message = AssistantMessage(item)
    elif isinstance(item, ToolCall):
        message = AssistantMessage(None, [item])
    elif isinstance(item, list) and all(isinstance(c, ToolCall) for c in item):
        message = AssistantMessage(None, list(item))
    else:
        raise UnexpectedModelBehavior(f"cannot turn {type(item).__name__} into a model response")
    usage = Usage(
        input_tokens=sum(estimate_tokens(_message_text(m)) for m in messages),
        output_tokens=estimate_tokens(_message_text(message)),
        requests=1,
    )
    finish = "tool_calls" if message.tool_calls else "stop"
    return ModelResponse(message, usage, finish, model_name)


class _DoubleBase(Model):
    """Shared recording and chunked streaming for the two test doubles."""

    def __init__(self, model_name: str, pricing: Pricing | None) -> None:
        self.model_name = model_name
        self.pricing = pricing
        self.requests: list[RecordedRequest] = []

    async def _answer(self, messages: list[Message], options: ModelRequestOptions) -> ScriptItem:
        raise NotImplementedError

    async def request(self, messages: list[Message], options: ModelRequestOptions) -> ModelResponse:
        self.requests.append(RecordedRequest(list(messages), options))
        response = _to_response(await self._answer(messages, options), messages, self.model_name)
        if self.pricing is not None and response.usage.cost_usd == 0.0:
            response.usage.cost_usd = self.cost(response.usage)
        return response

    async def stream(
        self, messages: list[Message], options: ModelRequestOptions
    ) -> AsyncIterator[StreamEvent]:
        # Split text into word-sized deltas and arguments into two halves, like a real server.
        response = await self.request(messages, options)
        text = response.message.content or ""
        start = 0
        while start < len(text):
            end = text.find(" ", start + 1)
            end = len(text) if end < 0 else end
            yield TextDeltaEvent(text[start:end])
            start = end
        for index, call in enumerate(response.message.tool_calls):
            args = json.dumps(call.arguments)
            half = len(args) // 2
            yield ToolCallDeltaEvent(index, call.id, call.name, args[:half])
            yield ToolCallDeltaEvent(index, None, None, args[half:])
        yield ResponseDoneEvent(response)

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]


class ScriptedModel(_DoubleBase):
    """Replays ``responses`` in order; raises UnexpectedModelBehavior when they run out."""

    def __init__(
        self,
        responses: Sequence[ScriptItem | ScriptFn],
        *,
        model_name: str = "scripted",
        pricing: Pricing | None = None,
    ) -> None:
        super().__init__(model_name, pricing)
        self._script = list(responses)
        self._next = 0

    @property
    def remaining(self) -> int:
        return len(self._script) - self._next

    async def _answer(self, messages: list[Message], options: ModelRequestOptions) -> ScriptItem:
        if self._next >= len(self._script):
            raise UnexpectedModelBehavior(
                f"ScriptedModel ran out of responses after {len(self._script)} requests; "
                f"the last request had {len(messages)} messages"
            )
        item = self._script[self._next]
        self._next += 1
        if callable(item):
            value = item(messages, options)
            return await value if inspect.isawaitable(value) else value
        return item


class FunctionModel(_DoubleBase):
    """Answers every request with ``fn(messages, options)`` (sync or async)."""

    def __init__(
        self, fn: ScriptFn, *, model_name: str = "function", pricing: Pricing | None = None
    ) -> None:
        super().__init__(model_name, pricing)
        self._fn = fn

    async def _answer(self, messages: list[Message], options: ModelRequestOptions) -> ScriptItem:
        value = self._fn(messages, options)
        return await value if inspect.isawaitable(value) else value


# --- concise builders --------------------------------------------------------------------------

_call_counter = 0


def tool_call(name: str, args: dict[str, Any] | None = None, *, id: str | None = None) -> ToolCall:
    """A ToolCall with a fresh id unless one is given."""
    global _call_counter
    _call_counter += 1
    return ToolCall(id or f"call_{_call_counter}", name, dict(args or {}))


def plan_step(
    id: str, tool: str | None, args: dict[str, Any] | None = None, *, depends_on: Sequence[str] = ()
) -> dict[str, Any]:
    """One plan step as the planner emits it. ``tool=None`` is a step the answer covers."""
    return {"id": id, "tool": tool, "args": dict(args or {}), "depends_on": list(depends_on)}


def plan(*steps: dict[str, Any], rationale: str = "") -> str:
    """A planner reply (JSON text) made of ``plan_step`` dicts."""
    return json.dumps({"steps": list(steps), "rationale": rationale})


def judge(score: float, reason: str = "") -> str:
    """A requirement judge reply (JSON text)."""
    return json.dumps({"score": score, "reason": reason})


# --- blocking real models ------------------------------------------------------------------------


class block_real_models:  # lower-case: called like a function, usable as a context manager
    """Make real models (OpenAIModel without a custom transport, LocalModel) refuse to run.

    Takes effect on construction: ``block_real_models()`` blocks for the rest of the process;
    ``with block_real_models(): ...`` restores the previous setting afterwards (this is how
    ``tests/conftest.py`` uses it, per test).
    """

    def __init__(self, blocked: bool = True) -> None:
        self.previous = set_real_models_blocked(blocked)

    def __enter__(self) -> block_real_models:
        return self

    def __exit__(self, *exc_info: object) -> None:
        set_real_models_blocked(self.previous)


@contextmanager
def allow_real_models() -> Iterator[None]:
    """Temporarily allow real model calls (for tests marked ``real_model`` / ``network``)."""
    previous = set_real_models_blocked(False)
    try:
        yield
    finally:
        set_real_models_blocked(previous)


__all__ = [
    "FunctionModel",
    "RecordedRequest",
    "ScriptedModel",
    "allow_real_models",
    "block_real_models",
    "estimate_tokens",
    "judge",
    "plan",
    "plan_step",
    "tool_call",
]
