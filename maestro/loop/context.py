"""Per-run state shared by every phase: the journal, the budget, events and model calls.

:class:`RunContext` is the only place a model is called during a run. Each call is a
*journaled step* with a deterministic key: before calling, the context looks the key up in
the steps a previous attempt of this run already finished (``Agent.resume``) and replays the
stored response instead. Otherwise it checks the budget (raising ``BudgetExceeded`` *before*
the call), opens a ``chat`` span, streams text deltas as events when asked, records usage,
emits a ``BudgetUpdate`` and writes the step to the store before returning.

:meth:`RunContext.request_structured` wraps a call in parse-and-validate with bounded retries:
the JSON schema travels down as ``response_format`` (constrained decoding where the model
supports it), and whatever comes back is still validated here, so a model that ignores the
schema gets the validation error back and another try.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic

from maestro import tracing
from maestro.budget import BudgetTracker
from maestro.errors import UnexpectedModelBehavior
from maestro.events import BudgetUpdate, Event, StepFinished, StepStarted, TextDelta
from maestro.llm.base import Model, ResponseDoneEvent, TextDeltaEvent
from maestro.messages import (
    AssistantMessage,
    Message,
    ModelRequestOptions,
    ModelResponse,
    UserMessage,
)
from maestro.runs import RunStore, StepRecord, StepStatus
from maestro.testing import estimate_tokens

T = TypeVar("T")
EventSink = Callable[[Event], Awaitable[None]]


@dataclass(slots=True)
class TraceStep:
    """One entry of a run's trace: what ran, how long it took, how it ended."""

    key: str
    kind: str
    status: str
    started_at: float
    duration_s: float
    error: str | None = None
    replayed: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "status": self.status,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "error": self.error,
            "replayed": self.replayed,
            "detail": dict(self.detail),
        }


def _message_chars(message: Message) -> str:
    if isinstance(message, AssistantMessage):
        calls = "".join(f"{c.name}{json.dumps(c.arguments)}" for c in message.tool_calls)
        return (message.content or "") + calls
    return message.content


def extract_json(text: str) -> str:
    """The JSON object inside a reply: strips code fences and prose around the braces."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    start, end = stripped.find("{"), stripped.rfind("}")
    if start >= 0 and end > start:
        return stripped[start : end + 1]
    return stripped


class RunContext:
    """Everything one run shares: ids, store, budget tracker, event sink, journal, trace."""

    def __init__(
        self,
        *,
        run_id: str,
        agent_name: str,
        model: Model,
        store: RunStore,
        tracker: BudgetTracker,
        sink: EventSink,
        finished_steps: dict[str, StepRecord],
    ) -> None:
        self.run_id = run_id
        self.agent_name = agent_name
        self.model = model
        self.store = store
        self.tracker = tracker
        self._sink = sink
        self.finished_steps = finished_steps
        self.trace: list[TraceStep] = []

    async def emit(self, event: Event) -> None:
        await self._sink(event)

    def idempotency_key(self, step_key: str) -> str:
        """Stable across crash and resume: a hash of the run id and the step key."""
        return hashlib.sha256(f"{self.run_id}\x00{step_key}".encode()).hexdigest()[:32]

    def replayable(self, key: str) -> StepRecord | None:
        record = self.finished_steps.get(key)
        return record if record is not None and record.finished else None

    async def save_step(
        self,
        *,
        key: str,
        kind: str,
        status: StepStatus,
        started_at: float,
        input: dict[str, Any],
        output: dict[str, Any] | None = None,
        error: str | None = None,
        idempotency_key: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        finished = None if status == "running" else time.time()
        record = StepRecord(
            run_id=self.run_id,
            key=key,
            kind=kind,
            status=status,
            input=input,
            output=output,
            error=error,
            started_at=started_at,
            finished_at=finished,
            idempotency_key=idempotency_key,
        )
        await self.store.save_step(record)
        if finished is not None:
            self.trace.append(
                TraceStep(
                    key, kind, status, started_at, finished - started_at, error, False, detail or {}
                )
            )

    def note_replayed(self, record: StepRecord) -> None:
        duration = (record.finished_at or record.started_at) - record.started_at
        self.trace.append(
            TraceStep(
                record.key,
                record.kind,
                record.status,
                record.started_at,
                duration,
                record.error,
                True,
            )
        )

    async def budget_update(self) -> None:
        await self.emit(
            BudgetUpdate(
                run_id=self.run_id,
                usage=self.tracker.snapshot(),
                limits=self.tracker.budget.limits(),
            )
        )

    async def call_model(
        self,
        key: str,
        kind: str,
        messages: list[Message],
        options: ModelRequestOptions,
        *,
        stream_text: bool = False,
    ) -> ModelResponse:
        """One journaled, budgeted, traced model call (see the module docstring)."""
        record = self.replayable(key)
        if record is not None and record.status == "succeeded" and record.output:
            response = ModelResponse.from_dict(record.output["response"])
            self.tracker.record_model(response.usage)
            self.note_replayed(record)
            await self.emit(
                StepFinished(
                    run_id=self.run_id, key=key, kind=kind, status="succeeded", replayed=True
                )
            )
            return response
        estimated = sum(estimate_tokens(_message_chars(m)) for m in messages)
        pricing = self.model.pricing
        input_usd = estimated * pricing.input_per_1m / 1_000_000 if pricing else 0.0
        output_left = self.tracker.check_model_call(estimated, input_usd)  # reserves a call
        try:
            response, started = await self._call_model_reserved(
                key, kind, messages, options, output_left, stream_text
            )
        finally:
            self.tracker.release_model_call()
        if response.usage.cost_usd == 0.0 and self.model.pricing is not None:
            response.usage.cost_usd = self.model.cost(response.usage)
        self.tracker.record_model(response.usage)
        await self.save_step(
            key=key,
            kind=kind,
            status="succeeded",
            started_at=started,
            input={"messages": len(messages)},
            output={"response": response.to_dict()},
            detail={"usage": response.usage.to_dict()},
        )
        await self.emit(
            StepFinished(
                run_id=self.run_id,
                key=key,
                kind=kind,
                status="succeeded",
                duration_s=time.time() - started,
            )
        )
        await self.budget_update()
        return response

    async def _call_model_reserved(
        self,
        key: str,
        kind: str,
        messages: list[Message],
        options: ModelRequestOptions,
        output_left: int | None,
        stream_text: bool,
    ) -> tuple[ModelResponse, float]:
        # Nothing here may suspend before the model is called: concurrent judge calls then
        # reach the model in the order they were started, which keeps scripted tests exact.
        if output_left is not None:
            wanted = options.max_tokens if options.max_tokens is not None else output_left
            options = dataclasses.replace(options, max_tokens=min(wanted, output_left))
        started = time.time()
        await self.emit(StepStarted(run_id=self.run_id, key=key, kind=kind))
        attributes = {
            tracing.OPERATION: "chat",
            tracing.REQUEST_MODEL: self.model.model_name,
            tracing.REQUEST_MAX_TOKENS: options.max_tokens,
            tracing.REQUEST_TEMPERATURE: options.temperature,
            tracing.CONVERSATION_ID: self.run_id,
        }
        with tracing.span(f"chat {self.model.model_name}", attributes) as span:
            if stream_text:
                response = await self._stream(key, messages, options)
            else:
                response = await self.model.request(messages, options)
            span.set_attribute(tracing.INPUT_TOKENS, response.usage.input_tokens)
            span.set_attribute(tracing.OUTPUT_TOKENS, response.usage.output_tokens)
            span.set_attribute(tracing.FINISH_REASONS, [response.finish_reason])
        return response, started

    async def _stream(
        self, key: str, messages: list[Message], options: ModelRequestOptions
    ) -> ModelResponse:
        final: ModelResponse | None = None
        async for event in self.model.stream(messages, options):
            if isinstance(event, TextDeltaEvent) and event.text:
                await self.emit(TextDelta(run_id=self.run_id, text=event.text, key=key))
            elif isinstance(event, ResponseDoneEvent):
                final = event.response
        if final is None:
            raise UnexpectedModelBehavior(f"{self.model!r} ended its stream without a response")
        return final

    async def request_structured(
        self,
        key: str,
        kind: str,
        messages: list[Message],
        options: ModelRequestOptions,
        adapter: pydantic.TypeAdapter[T],
        *,
        retries: int = 2,
        stream_text: bool = False,
        schema: dict[str, Any] | None = None,
    ) -> tuple[T, ModelResponse]:
        """A model call whose answer must validate against ``adapter``'s JSON schema.

        ``schema`` narrows what is sent down for decoding (e.g. tool names as an enum) while
        ``adapter`` still validates the reply.
        """
        schema = schema if schema is not None else adapter.json_schema()
        options = dataclasses.replace(options, response_format=schema)
        conversation = list(messages)
        last_error = ""
        for attempt in range(retries + 1):
            step_key = key if attempt == 0 else f"{key}#retry{attempt}"
            response = await self.call_model(
                step_key, kind, conversation, options, stream_text=stream_text
            )
            raw = response.text
            if not raw.strip() and response.message.tool_calls:
                raw = json.dumps(response.message.tool_calls[0].arguments)
            try:
                return adapter.validate_json(extract_json(raw)), response
            except pydantic.ValidationError as exc:
                last_error = _short_validation_error(exc)
            if response.finish_reason == "length" and options.max_tokens is not None:
                # Cut off mid-JSON: the same limit would cut it off again.
                options = dataclasses.replace(options, max_tokens=options.max_tokens * 2)
            conversation = [
                *conversation,
                AssistantMessage(raw),
                UserMessage(
                    "That reply does not match the required JSON schema: "
                    f"{last_error}. Reply again with only a JSON object that matches "
                    f"this schema:\n{json.dumps(schema)}"
                ),
            ]
        raise UnexpectedModelBehavior(
            f"{self.model!r} gave no valid JSON for {key!r} after {retries + 1} tries: {last_error}"
        )


def _short_validation_error(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
