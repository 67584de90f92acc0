"""The runs API, in the style of AI21 Maestro: start a task, poll it, stream its events.

- ``POST /v1/runs`` ``{"input": "...", "requirements": [{"description", "mandatory"}],
  "budget": "low|medium|high", "tools": ["calculator"]}`` starts a run in a background task
  and answers 201 with the run (``status: "running"``). ``task`` is accepted for ``input``.
- ``GET /v1/runs?limit=20``: the caller's runs, newest first.
- ``GET /v1/runs/{id}``: status, result (the answer), the requirements report, usage, data
  sources, finish reason and error.
- ``GET /v1/runs/{id}/events``: the run's events as SSE (``id: <n>``, ``event: <type>``,
  ``data: <json>``), ending when the run finishes. Live runs of this process replay everything
  so far, token deltas included, then follow; runs from the database (another process, a
  restart) replay the stored event log and follow it by polling while the run is running. A
  reconnecting client sends ``Last-Event-ID`` (the last ``id`` it got) and receives only the
  events after it. Ids count within one of the two sources: a stream that was live in this
  process and is resumed from the database after a restart (or after the run fell out of the
  live window) may start over.
- ``POST /v1/runs/{id}/cancel``: stops a run executing in this process; the run ends with
  status ``cancelled`` (its partial answer kept) and the run is returned. 409 when the run has
  already finished or executes in another process.

Runs are persisted through the database's RunStore when the server has one, in memory
otherwise. Each run belongs to the user who started it (``request.state.user``); another
user gets 404 for it, exactly as for a run that does not exist.

Tools are named, not sent: only tools in the server's registry (:data:`SAFE_TOOLS` by
default — pure functions with no access to files, network or processes) can be enabled.
At most ``max_active`` runs execute at once; past that, ``POST`` answers 429.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from maestro.agent import Agent
from maestro.errors import MaestroError
from maestro.events import Event, RunFinished, RunStarted
from maestro.llm.base import Model
from maestro.requirements import Requirement
from maestro.runs import RunRecord, RunStore
from maestro.server.chat import parse_body
from maestro.server.errors import APIError, from_maestro, log
from maestro.server.sse import SSE_HEADERS, frame
from maestro.tool import Tool

ToolFactory = Callable[[], Tool]
MAX_TOOLS = 16
STORE_POLL_SECONDS = 0.25
#: Finished runs whose live event log (with token deltas) stays in memory; older ones are
#: answered from the store.
KEEP_FINISHED_LIVE = 256


def _calculator() -> Tool:
    from tools.calculator import calculator

    return calculator


#: Tools a client may enable by name: side-effect free and safe to expose to any caller.
SAFE_TOOLS: dict[str, ToolFactory] = {"calculator": _calculator}


class RequirementSpec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    description: str = pydantic.Field(min_length=1, max_length=2000)
    mandatory: bool = False


class CreateRunRequest(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow", populate_by_name=True)
    input: str = pydantic.Field(
        min_length=1,
        max_length=100_000,
        validation_alias=pydantic.AliasChoices("input", "task"),
    )
    requirements: list[RequirementSpec | str] = pydantic.Field(default_factory=list, max_length=50)
    budget: Literal["low", "medium", "high"] = "low"
    tools: list[str] = pydantic.Field(default_factory=list, max_length=MAX_TOOLS)


@dataclass(slots=True)
class _LiveRun:
    """A run executing in this process: its events so far and who may see them."""

    id: str
    user: str
    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    started: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None
    failure: str | None = None


def _last_event_id(request: Request) -> int:
    """The SSE ``Last-Event-ID`` a reconnecting client sends (0: from the start)."""
    raw = request.headers.get("last-event-id", "").strip()
    if not raw:
        return 0
    try:
        return max(int(raw), 0)
    except ValueError:
        raise APIError(
            400, "Last-Event-ID must be the integer id of an event", param="Last-Event-ID"
        ) from None


class RunService:
    """Starts runs in background tasks and answers the runs endpoints."""

    def __init__(
        self,
        model: Model,
        store_of: Callable[[], RunStore],
        tools: Mapping[str, ToolFactory],
        *,
        max_active: int = 16,
    ) -> None:
        self.model = model
        self.max_active = max_active
        self._store_of = store_of
        self.tools = dict(tools)
        self.live: dict[str, _LiveRun] = {}
        self._finished: collections.deque[str] = collections.deque()

    @property
    def store(self) -> RunStore:
        return self._store_of()

    async def create(self, request: Request) -> Response:
        body: CreateRunRequest = parse_body(CreateRunRequest, await request.body())
        user: str = request.state.user
        active = sum(1 for r in self.live.values() if not r.done)
        if active >= self.max_active:
            raise APIError(
                429,
                f"{active} runs are executing, the most this server runs at once; retry later",
                code="too_many_runs",
            )
        unknown = [t for t in body.tools if t not in self.tools]
        if unknown:
            raise APIError(
                400,
                f"unknown tool {unknown[0]!r}; available: {', '.join(sorted(self.tools)) or 'none'}",
                param="tools",
                code="unknown_tool",
            )
        requirements = [
            Requirement(r)
            if isinstance(r, str)
            else Requirement(r.description, mandatory=r.mandatory)
            for r in body.requirements
        ]
        try:
            agent = Agent(
                self.model,
                tools=[self.tools[name]() for name in dict.fromkeys(body.tools)],
                store=self.store,
                budget=body.budget,
                name="maestro-server",
            )
        except MaestroError as exc:
            raise from_maestro(exc) from exc
        run = _LiveRun(id=f"run_{uuid.uuid4().hex[:16]}", user=user)
        self.live[run.id] = run
        run.task = asyncio.create_task(self._execute(agent, run, body.input, requirements))
        # Answer once the run row exists, so a GET right after this POST finds it.
        started = asyncio.ensure_future(run.started.wait())
        await asyncio.wait({started, run.task}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if run.failure is not None and not run.started.is_set():
            self.live.pop(run.id, None)
            raise APIError(500, f"the run could not start: {run.failure}", code="run_failed")
        record = await self.store.get_run(run.id)
        return JSONResponse(self._run_body(record, run), status_code=201)

    async def _execute(
        self, agent: Agent, run: _LiveRun, task: str, requirements: list[Requirement]
    ) -> None:
        try:
            async for event in agent.run_stream(
                task, requirements=requirements, run_id=run.id, user_id=run.user
            ):
                await self._publish(run, event)
        except asyncio.CancelledError:
            # The agent closed the run as cancelled, but its RunFinished went to a consumer
            # that is gone: give followers of the live log the stored ending.
            record = await self.store.get_run(run.id)
            last = run.events[-1]["type"] if run.events else None
            if record is not None and record.result is not None and last != RunFinished.type:
                await self._publish(run, RunFinished(
                    run_id=run.id, result=record.result, status=record.status,
                    finish_reason=str(record.result.get("finish_reason") or "cancelled"),
                ))
            raise
        except Exception as exc:  # a bug or store failure: the run is closed by the agent
            run.failure = repr(exc)
            log.exception("run %s failed", run.id)
        finally:
            run.done = True
            async with run.changed:
                run.changed.notify_all()
            self._finished.append(run.id)
            while len(self._finished) > KEEP_FINISHED_LIVE:
                self.live.pop(self._finished.popleft(), None)

    async def _publish(self, run: _LiveRun, event: Event) -> None:
        run.events.append(event.to_dict())
        if isinstance(event, RunStarted):
            run.started.set()
        async with run.changed:
            run.changed.notify_all()

    async def _owned(self, request: Request) -> tuple[RunRecord | None, _LiveRun | None]:
        run_id = request.path_params["run_id"]
        user: str = request.state.user
        live = self.live.get(run_id)
        if live is not None and live.user != user:
            live = None
        record = await self.store.get_run(run_id)
        if record is not None and (record.user_id or "") != user:
            record = None
        if record is None and live is None:
            raise APIError(404, f"no run {run_id!r}", param="run_id", code="run_not_found")
        return record, live

    async def list_runs(self, request: Request) -> Response:
        user: str = request.state.user
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            raise APIError(400, "limit must be an integer", param="limit") from None
        if not 1 <= limit <= 100:
            raise APIError(400, "limit must be within 1..100", param="limit")
        store: Any = self.store
        records: list[RunRecord]
        if hasattr(store, "list_runs"):  # the SQL store filters in the database
            records = await store.list_runs(user_id=user, limit=limit)
        else:
            mine = [r for r in getattr(store, "runs", {}).values() if r.user_id == user]
            records = sorted(mine, key=lambda r: r.created_at, reverse=True)[:limit]
        data = [self._run_body(r, self.live.get(r.id)) for r in records]
        return JSONResponse({"object": "list", "data": data})

    async def get(self, request: Request) -> Response:
        record, live = await self._owned(request)
        return JSONResponse(self._run_body(record, live))

    async def events(self, request: Request) -> Response:
        record, live = await self._owned(request)
        after = _last_event_id(request)
        source = (
            self._follow_live(live, after) if live is not None else self._follow_store(record, after)
        )
        return StreamingResponse(source, media_type="text/event-stream", headers=SSE_HEADERS)

    async def cancel(self, request: Request) -> Response:
        record, live = await self._owned(request)
        if live is not None and live.task is not None and not live.done:
            live.task.cancel()
            await asyncio.wait({live.task})  # the agent closes the run as cancelled
            return JSONResponse(self._run_body(await self.store.get_run(live.id), live))
        run_id = request.path_params["run_id"]
        status = record.status if record is not None else "running"
        if status == "running":
            raise APIError(
                409, f"run {run_id!r} executes in another server process; cancel it there",
                param="run_id", code="run_not_cancellable",
            )
        raise APIError(
            409, f"run {run_id!r} has already finished ({status})", param="run_id",
            code="run_finished",
        )

    async def _follow_live(self, run: _LiveRun, after: int = 0) -> AsyncIterator[str]:
        sent = after
        while True:
            async with run.changed:
                while sent >= len(run.events) and not run.done:
                    await run.changed.wait()
            while sent < len(run.events):
                event = run.events[sent]
                yield frame(event, event=str(event.get("type")), id=sent + 1)
                sent += 1
            if run.done:
                return

    async def _follow_store(self, record: RunRecord | None, after: int = 0) -> AsyncIterator[str]:
        assert record is not None
        store: Any = self.store
        read = getattr(store, "get_events", None)
        cursor = after
        while True:
            current = await store.get_run(record.id)
            finished = current is None or current.status != "running"
            if read is not None:
                batch = await read(record.id, after_id=cursor)
            else:  # the in-memory store keeps a plain list
                stored = getattr(store, "events", {}).get(record.id, [])
                batch = list(enumerate(stored[cursor:], start=cursor + 1))
            for event_id, event in batch:
                cursor = event_id
                yield frame(event, event=str(event.get("type")), id=event_id)
                if event.get("type") == RunFinished.type:
                    return
            if finished:
                return
            await asyncio.sleep(STORE_POLL_SECONDS)

    def _run_body(self, record: RunRecord | None, live: _LiveRun | None) -> dict[str, Any]:
        result = (record.result if record else None) or {}
        report = result.get("report") or None
        status = record.status if record else "running"
        if live is not None and live.failure is not None and status == "running":
            status = "failed"
        payload = record.payload if record else {}
        return {
            "id": record.id if record else live.id if live else None,
            "object": "run",
            "status": status,
            "created_at": record.created_at if record else None,
            "finished_at": record.finished_at if record else None,
            "input": record.task if record else None,
            "budget": (payload.get("budget") or {}).get("preset"),
            "requirements": payload.get("requirements", []),
            "result": result.get("answer"),
            "output": result.get("output"),
            "requirements_result": report,
            "passed": bool(report and report.get("passed")) if report else None,
            "usage": result.get("usage"),
            "data_sources": result.get("data_sources", []),
            "tool_calls": result.get("tool_calls", []),
            "finish_reason": result.get("finish_reason"),
            "error": result.get("error") or (live.failure if live else None),
        }

    async def shutdown(self) -> None:
        """Cancel runs still executing (each is recorded as cancelled by the agent)."""
        tasks = [r.task for r in self.live.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
