"""The one seam between Maestro and any language model.

A model is two methods: :meth:`Model.request` (one chat completion) and :meth:`Model.stream`
(the same, as events). Everything else — retries, budgets, tracing, tool execution — lives in
the loop, so a new provider is a thin class. ``stream`` has a default built on ``request``;
providers that can stream override it.

Stream events are small frozen dataclasses: :class:`TextDeltaEvent` (a text increment),
:class:`ToolCallDeltaEvent` (a fragment of a tool call: index, id/name when first seen,
a piece of the JSON arguments) and, always last, :class:`ResponseDoneEvent` carrying the
complete :class:`ModelResponse` with usage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from maestro.errors import UserError
from maestro.messages import Message, ModelRequestOptions, ModelResponse, Usage


@dataclass(frozen=True, slots=True)
class Pricing:
    """USD per one million tokens; lets a Budget cap spend on priced remote models."""

    input_per_1m: float
    output_per_1m: float

    def cost(self, usage: Usage) -> float:
        return (
            usage.input_tokens * self.input_per_1m + usage.output_tokens * self.output_per_1m
        ) / 1_000_000


@dataclass(frozen=True, slots=True)
class TextDeltaEvent:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDeltaEvent:
    index: int
    id: str | None
    name: str | None
    arguments_delta: str


@dataclass(frozen=True, slots=True)
class ResponseDoneEvent:
    response: ModelResponse


StreamEvent = TextDeltaEvent | ToolCallDeltaEvent | ResponseDoneEvent


class Model(ABC):
    """A chat model. Implementations: LocalModel, OpenAIModel, ScriptedModel, FunctionModel."""

    model_name: str = "model"
    pricing: Pricing | None = None

    @abstractmethod
    async def request(self, messages: list[Message], options: ModelRequestOptions) -> ModelResponse:
        """One chat completion. Raises a ``ModelError`` subclass on provider failure."""

    async def stream(
        self, messages: list[Message], options: ModelRequestOptions
    ) -> AsyncIterator[StreamEvent]:
        """The same completion as events; the default emits the whole text as one delta."""
        response = await self.request(messages, options)
        if response.message.content:
            yield TextDeltaEvent(response.message.content)
        yield ResponseDoneEvent(response)

    def cost(self, usage: Usage) -> float:
        """USD for this usage, 0.0 for unpriced (local) models."""
        return self.pricing.cost(usage) if self.pricing else 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name!r})"


# --- blocking real model calls in tests -------------------------------------------------------
# Tests must never reach the network or load multi-hundred-MB weights by accident. The test
# harness calls ``maestro.testing.block_real_models()``; real models call
# ``ensure_real_models_allowed`` before doing anything expensive or remote.

_real_models_blocked = False


def set_real_models_blocked(blocked: bool) -> bool:
    """Block (or allow) real model calls process-wide; returns the previous setting."""
    global _real_models_blocked
    previous = _real_models_blocked
    _real_models_blocked = blocked
    return previous


def ensure_real_models_allowed(what: str) -> None:
    """Raise UserError if real model calls are blocked (the test default)."""
    if _real_models_blocked:
        raise UserError(
            f"{what}: real model calls are blocked in this process (tests block them by "
            "default). Use maestro.testing.ScriptedModel / FunctionModel, pass an httpx "
            "transport, or wrap the code in maestro.testing.allow_real_models()."
        )
