"""Durable Python workflows: ``@workflow`` functions whose steps survive a crash.

::

    @workflow
    async def onboard(ctx: WorkflowContext, user: str) -> dict:
        profile = await ctx.step("fetch_profile", fetch_profile, user)
        await ctx.step("send_welcome", send_email, profile["email"])   # runs once, ever
        return profile

    result = await onboard.run(db.runs, "alice")            # run id in onboard.last_run_id
    result = await onboard.resume(run_id, store=db.runs)   # after a crash: skips done steps
    result = await onboard.start(db.runs, "my-id", "alice") # new id: start; known id: resume

Each ``ctx.step(name, fn, *args)`` call is keyed by ``(run id, name, call index)`` — the
n-th call of that name in this run — and its result is committed to the ``RunStore`` before
``step`` returns. Re-running the workflow replays finished steps from the store (``fn`` is
not called) and executes the rest. The workflow body must therefore be deterministic apart
from its steps: anything that talks to the world or reads a clock belongs in a step.

Results cross a JSON round trip even on the first run, so a resumed run sees exactly the
values an uninterrupted run saw. A step that started but never finished is executed again
with the same idempotency key (``current_step().idempotency_key``), which side-effecting
functions can pass to the outside world to deduplicate.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import inspect
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, cast

from maestro.errors import MaestroError, UserError
from maestro.runs import RunRecord, RunStore, StepRecord

P = ParamSpec("P")
R = TypeVar("R")
AGENT_PREFIX = "workflow:"
STEP_KIND = "workflow_step"


class Enqueuer(Protocol):
    """The part of ``maestro.memory.queue.RunQueue`` that ``Workflow.enqueue`` needs."""

    async def enqueue(self, task: str, *, agent_name: str, payload: dict[str, Any]) -> str: ...


class WorkflowFailed(MaestroError):
    """The workflow body raised; the run is marked failed and the cause is chained."""


@dataclass(frozen=True)
class StepInfo:
    """The step now executing, visible inside ``fn`` through ``current_step()``."""

    run_id: str
    key: str
    idempotency_key: str
    attempt_resumed: bool  # True when an earlier attempt of this very step had started


_current: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar(
    "maestro_workflow_step", default=None
)


def current_step() -> StepInfo | None:
    return _current.get()


def _json_roundtrip(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise UserError(f"{what} must be JSON-serialisable to be stored: {exc}") from exc


class WorkflowContext:
    """Handed to the workflow body as its first argument."""

    def __init__(
        self, store: RunStore, run_id: str, finished: dict[str, StepRecord], started: set[str]
    ) -> None:
        self.store = store
        self.run_id = run_id
        self._finished = finished
        self._started = started
        self._calls: Counter[str] = Counter()
        self.replayed = 0  # steps answered from the store in this execution
        self.executed = 0  # steps whose function actually ran

    async def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once per (run, name, call index); await it if async."""
        index = self._calls[name]
        self._calls[name] += 1  # before any await: call order alone decides the key
        key = f"{name}#{index}"
        done = self._finished.get(key)
        if done is not None and done.output is not None:
            self.replayed += 1
            return done.output.get("value")
        info = StepInfo(self.run_id, key, f"{self.run_id}:{key}", key in self._started)
        record = StepRecord(
            run_id=self.run_id,
            key=key,
            kind=STEP_KIND,
            status="running",
            input=_json_roundtrip({"args": list(args), "kwargs": kwargs}, f"arguments of {key}")
            if _jsonable(args, kwargs)
            else {"repr": repr((args, kwargs))[:2000]},
            idempotency_key=info.idempotency_key,
        )
        await self.store.save_step(record)
        token = _current.set(info)
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
            value = _json_roundtrip(value, f"the result of step {key!r}")
        except BaseException as exc:
            record.status, record.error, record.finished_at = "failed", repr(exc), time.time()
            await self.store.save_step(record)
            raise
        finally:
            _current.reset(token)
        record.status, record.output, record.finished_at = (
            "succeeded",
            {"value": value},
            time.time(),
        )
        await self.store.save_step(record)
        self.executed += 1
        return value


def _jsonable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        json.dumps({"args": list(args), "kwargs": kwargs})
    except (TypeError, ValueError):
        return False
    return True


_REGISTRY: dict[str, Workflow[Any, Any]] = {}


class Workflow(Generic[P, R]):
    """A durable workflow; created by ``@workflow``. Callable only through ``run``/``resume``."""

    def __init__(self, fn: Callable[Concatenate[WorkflowContext, P], Awaitable[R]]) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise UserError(f"@workflow needs an async function, got {fn!r}")
        self.fn = fn
        self.name = f"{fn.__module__}:{fn.__qualname__}"
        self.last_run_id: str | None = None
        self.last_context: WorkflowContext | None = None
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        _REGISTRY[self.name] = self

    async def run(self, store: RunStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Start a new run of this workflow on ``store``; its id is then ``last_run_id``."""
        return await self.start(store, uuid.uuid4().hex, *args, **kwargs)

    async def start(self, store: RunStore, run_id: str, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run under a chosen id: a new id starts the run, an existing one resumes it (so a
        caller that crashed before learning the outcome can simply call ``start`` again)."""
        if await store.get_run(run_id) is not None:
            return await self.resume(run_id, store=store)
        payload = _json_roundtrip(
            {"workflow": self.name, "args": list(args), "kwargs": dict(kwargs)},
            f"the arguments of workflow {self.name}",
        )
        run = RunRecord(
            id=run_id, task=self.name, agent_name=AGENT_PREFIX + self.name, payload=payload
        )
        await store.create_run(run)
        return await self.execute(store, run)

    async def enqueue(self, queue: Enqueuer, /, *args: P.args, **kwargs: P.kwargs) -> str:
        """Queue a run for ``maestro worker`` (``queue``: ``Database.queue``); returns its id."""
        payload = _json_roundtrip(
            {"workflow": self.name, "args": list(args), "kwargs": dict(kwargs)},
            f"the arguments of workflow {self.name}",
        )
        return await queue.enqueue(self.name, agent_name=AGENT_PREFIX + self.name, payload=payload)

    async def resume(self, run_id: str, *, store: RunStore) -> R:
        """Finish an interrupted run (a completed run just returns its stored result)."""
        run = await store.get_run(run_id)
        if run is None:
            raise UserError(f"no run {run_id!r} to resume")
        if run.payload.get("workflow") != self.name:
            raise UserError(
                f"run {run_id!r} belongs to {run.payload.get('workflow')!r}, not {self.name}"
            )
        return await self.execute(store, run)

    async def execute(self, store: RunStore, run: RunRecord, *, finish: bool = True) -> R:
        """Run the body against ``run``'s stored steps. With ``finish`` (default) the run is
        marked completed/failed at the end; the worker passes ``False`` and finishes it under
        its lease instead."""
        if run.status == "completed" and run.result is not None:
            self.last_run_id = run.id
            return cast(R, run.result.get("value"))
        steps = await store.get_steps(run.id)
        finished = {s.key: s for s in steps if s.status == "succeeded" and s.output is not None}
        started = {s.key for s in steps}
        ctx = WorkflowContext(store, run.id, finished, started)
        self.last_run_id, self.last_context = run.id, ctx
        args = run.payload.get("args", [])
        kwargs = run.payload.get("kwargs", {})
        try:
            value = _json_roundtrip(
                await self.fn(ctx, *args, **kwargs), f"the result of {self.name}"
            )
        except Exception as exc:
            if finish:
                await store.finish_run(run.id, "failed", {"error": repr(exc)})
            raise WorkflowFailed(f"workflow {self.name} (run {run.id}) failed: {exc!r}") from exc
        if finish:
            await store.finish_run(run.id, "completed", {"value": value})
        return value  # type: ignore[no-any-return]


def workflow(fn: Callable[Concatenate[WorkflowContext, P], Awaitable[R]]) -> Workflow[P, R]:
    """Make ``fn`` (``async def fn(ctx, ...)``) a durable workflow. See the module docstring."""
    return Workflow(fn)


def resolve(name: str) -> Workflow[Any, Any]:
    """The workflow registered as ``"module:qualname"``, importing its module if needed.

    Only functions decorated with ``@workflow`` resolve: a run's stored name cannot make a
    worker call an arbitrary function.
    """
    name = name.removeprefix(AGENT_PREFIX)
    if name not in _REGISTRY:
        module, _, _attr = name.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserError(f"cannot import the module of workflow {name!r}: {exc}") from exc
    found = _REGISTRY.get(name)
    if found is None:
        raise UserError(f"{name!r} is not a @workflow")
    return found


async def resume_run(store: RunStore, run_id: str) -> Any:
    """Resume any workflow run by id, finding its workflow from the stored name."""
    run = await store.get_run(run_id)
    if run is None:
        raise UserError(f"no run {run_id!r}")
    name = run.payload.get("workflow")
    if not isinstance(name, str):
        raise UserError(f"run {run_id!r} is not a workflow run (agent {run.agent_name!r})")
    return await resolve(name).resume(run_id, store=store)


__all__ = [
    "StepInfo",
    "Workflow",
    "WorkflowContext",
    "WorkflowFailed",
    "current_step",
    "resolve",
    "resume_run",
    "workflow",
]
