"""Run launchers: turn a task into the event stream the run view consumes.

Two launchers exist, picked once by :func:`default_launcher`:

- :func:`agent_launcher` drives ``maestro.agent.Agent`` (plan → execute → validate → fix) with
  the TUI's approval callback, when that module is installed.
- :func:`chat_launcher` is a single streamed model turn dressed in the same events (one
  ``draft`` step, text deltas, usage, ``RunFinished``). It is what the TUI falls back to
  without the agent loop, and it is honest about it: the run is named ``chat``.

Both surface failures as a failed ``RunFinished`` with the error in ``finish_reason``
instead of raising, so a model that dies mid-answer leaves a readable run in the panel.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from maestro.errors import MaestroError
from maestro.events import (
    ApprovalRequested,
    BudgetUpdate,
    Event,
    FixRound,
    PlanMade,
    RequirementScored,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
)
from maestro.llm.base import Model, ResponseDoneEvent, TextDeltaEvent
from maestro.messages import ModelRequestOptions, ModelResponse, UserMessage
from maestro.requirements import Requirement
from maestro.runs import RunRecord, RunStatus
from maestro.tool import Tool
from maestro.tui.services import RunLauncher, RunRequest

CHAT_STEP = "draft:0:0"


async def chat_launcher(model: Model, request: RunRequest) -> AsyncGenerator[Event, None]:
    """One streamed answer to ``request.task`` given the thread's history.

    The run is journaled in ``request.run_store`` (when given) as it starts and ends, so a
    run cut short by a killed process is listed as interrupted and can be resumed, and a
    cancelled one is recorded as cancelled.
    """
    run_id = request.resume_run_id or uuid.uuid4().hex
    store = request.run_store
    if store is not None:
        payload = {"thread_id": request.thread_id, "budget": request.budget}
        await store.create_run(RunRecord(run_id, request.task, agent_name="chat", payload=payload))
    outcome: tuple[RunStatus, dict[str, Any]] = ("cancelled", {})
    try:
        async for event in _chat_events(model, request, run_id):
            if isinstance(event, RunFinished):
                status: RunStatus = "completed" if event.status == "completed" else "failed"
                outcome = (status, {**event.result, "finish_reason": event.finish_reason})
            yield event
    finally:
        if store is not None:
            await store.finish_run(run_id, *outcome)


async def _chat_events(
    model: Model, request: RunRequest, run_id: str
) -> AsyncGenerator[Event, None]:
    yield RunStarted(
        run_id=run_id, task=request.task, agent_name="chat", resumed=bool(request.resume_run_id)
    )
    yield StepStarted(run_id=run_id, key=CHAT_STEP, kind="draft", description="answer")
    started = time.monotonic()
    messages = [*request.history, UserMessage(request.task)]
    response: ModelResponse | None = None
    text: list[str] = []
    try:
        async for chunk in model.stream(messages, ModelRequestOptions()):
            if isinstance(chunk, TextDeltaEvent):
                text.append(chunk.text)
                yield TextDelta(run_id=run_id, text=chunk.text, key=CHAT_STEP)
            elif isinstance(chunk, ResponseDoneEvent):
                response = chunk.response
    except MaestroError as exc:
        elapsed = time.monotonic() - started
        yield StepFinished(
            run_id=run_id,
            key=CHAT_STEP,
            kind="draft",
            status="failed",
            error=str(exc),
            duration_s=elapsed,
        )
        yield RunFinished(
            run_id=run_id,
            result={"answer": "".join(text)},
            finish_reason=str(exc),
            status="failed",
        )
        return
    elapsed = time.monotonic() - started
    answer = "".join(text) or (response.message.content or "" if response else "")
    usage: dict[str, Any] = response.usage.to_dict() if response else {}
    yield StepFinished(
        run_id=run_id, key=CHAT_STEP, kind="draft", status="succeeded", duration_s=elapsed
    )
    yield BudgetUpdate(
        run_id=run_id,
        usage={**usage, "tool_calls": 0, "wall_seconds": round(elapsed, 3)},
        limits={},
    )
    yield RunFinished(
        run_id=run_id,
        result={"answer": answer, "usage": usage},
        finish_reason="answered",
        status="completed",
    )


def agent_available() -> bool:
    """Whether the agent loop (``maestro.agent``) is installed in this build."""
    return importlib.util.find_spec("maestro.agent") is not None


def agent_launcher(
    tools: Sequence[Tool] = (), requirements: Sequence[Requirement] = ()
) -> RunLauncher:
    """A launcher that runs the full Maestro loop with ``tools`` and ``requirements``.

    The agent is built per run so the budget preset chosen in the palette applies to the
    next task, with the TUI's approval callback and run store. ``Agent.resume`` returns a
    result rather than a stream, so a resumed run first replays the events the store kept
    (the plan and the steps finished before the interruption), then reports the outcome.
    """

    async def launch(model: Model, request: RunRequest) -> AsyncGenerator[Event, None]:
        from maestro.agent import Agent

        agent = Agent(
            model=model,
            tools=list(tools),
            requirements=list(requirements),
            budget=request.budget,
            approval=request.approve,
            store=request.run_store,
        )
        if request.resume_run_id:
            async for event in _resume(agent, request.resume_run_id, request.task):
                yield event
            return
        async for event in agent.run_stream(request.task):
            yield event

    return launch


async def _resume(agent: Any, run_id: str, task: str) -> AsyncGenerator[Event, None]:
    yield RunStarted(run_id=run_id, task=task, agent_name=agent.name, resumed=True)
    seen = 0
    async for event_id, event in _stored_events(agent.store, run_id, after=0):
        seen = event_id
        yield event
    result = await agent.resume(run_id)
    # What the resumed part did, from the journal (resume itself does not stream).
    async for _, event in _stored_events(agent.store, run_id, after=seen):
        yield event
    yield BudgetUpdate(run_id=run_id, usage=result.usage.to_dict(), limits={})
    yield RunFinished(
        run_id=run_id,
        result=result.to_dict(),
        finish_reason=result.finish_reason,
        status=result.status,
    )


async def _stored_events(
    store: Any, run_id: str, *, after: int
) -> AsyncGenerator[tuple[int, Event], None]:
    """Events the store journaled for ``run_id`` (stores without ``get_events`` have none)."""
    get_events = getattr(store, "get_events", None)
    if not callable(get_events):
        return
    for event_id, data in await get_events(run_id, after_id=after):
        event = event_from_dict(data)
        if event is not None and not isinstance(event, RunStarted | RunFinished):
            yield event_id, event


_EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        RunStarted,
        PlanMade,
        StepStarted,
        StepFinished,
        TextDelta,
        ToolCallStarted,
        ToolCallFinished,
        ApprovalRequested,
        RequirementScored,
        FixRound,
        BudgetUpdate,
        RunFinished,
    )
}


def event_from_dict(data: dict[str, Any]) -> Event | None:
    """Rebuild an event stored with ``Event.to_dict`` (unknown types and fields are dropped)."""
    cls = _EVENT_TYPES.get(str(data.get("type")))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError:
        return None


def default_launcher(
    tools: Sequence[Tool] = (), requirements: Sequence[Requirement] = ()
) -> RunLauncher:
    """The agent loop when available, else a plain streamed chat turn."""
    return agent_launcher(tools, requirements) if agent_available() else chat_launcher


__all__ = [
    "CHAT_STEP",
    "agent_available",
    "agent_launcher",
    "chat_launcher",
    "default_launcher",
    "event_from_dict",
]
