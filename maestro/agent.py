"""The Agent: plan → execute → draft → validate → fix, within a budget, every step visible.

::

    agent = Agent(model=OpenAIModel(...), tools=[calculator], requirements=[...], budget="medium")
    result = await agent.run("What is 17% of 2,340?")
    result.answer, result.report.summary(), result.usage, result.trace

    async for event in agent.run_stream(task):   # the TUI, CLI and server consume this
        ...

    await agent.resume(run_id)                   # after a crash: finished steps are replayed

One run, in order: the run is written to the store and ``RunStarted`` emitted; if the agent
has tools, the model plans (a typed plan checked against the real tools); the plan's steps
execute, independent ones concurrently; failed steps trigger a re-plan while the budget allows
(``max_replans``); then the refiner drafts, scores and fixes the answer until the requirements
pass or the budget is spent. Whatever happens — requirements met, a cap hit, a provider error,
cancellation — the run ends with ``RunFinished`` and a finish reason, the store row is closed,
and ``run`` returns a :class:`RunResult` with the best answer so far (cancellation re-raises
after recording). Control-flow exceptions never escape; model errors end the run with status
``failed`` and are reported, not lost in a task.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import anyio
import pydantic

from maestro import tracing
from maestro.budget import Budget, BudgetTracker
from maestro.errors import BudgetExceeded, ModelError, UnexpectedModelBehavior, UserError
from maestro.events import (
    BudgetUpdate,
    Event,
    PlanMade,
    RunFinished,
    RunStarted,
    StepStarted,
    TextDelta,
)
from maestro.llm.base import Model
from maestro.loop.chat import ChatLoop, ChatResult, EventCallback
from maestro.loop.context import RunContext, TraceStep
from maestro.loop.execute import ApprovalCallback, PlanExecutor
from maestro.loop.plan import make_plan
from maestro.loop.refine import Refiner
from maestro.loop.result import RunResult, RunState, build_result, describe_outcomes
from maestro.messages import Message
from maestro.requirements import Requirement
from maestro.runs import InMemoryRunStore, RunRecord, RunStatus, RunStore, StepRecord
from maestro.tool import Tool, tool


class Agent:
    """A configured agent; cheap to build, safe to run many times (each run is independent)."""

    def __init__(
        self,
        model: Model | str,
        *,
        tools: Sequence[Tool | Callable[..., Any]] = (),
        instructions: str = "",
        requirements: Sequence[Requirement | str] = (),
        budget: Budget | str | None = None,
        store: RunStore | None = None,
        approval: ApprovalCallback | None = None,
        output_type: Any = None,
        name: str = "agent",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(model, str):  # a spec: registry name, path, URL (see maestro.llm.spec)
            from maestro.llm.spec import resolve_model

            model = resolve_model(model)
        if not isinstance(model, Model):
            raise UserError(f"Agent(model=...) needs a maestro Model, got {type(model).__name__}")
        self.model = model
        self.tools: dict[str, Tool] = {}
        for item in tools:
            # A plain typed function is accepted and wrapped, as if decorated with @tool.
            t = item if isinstance(item, Tool) else _as_tool(item)
            if t.name in self.tools:
                raise UserError(f"two tools are named {t.name!r}; tool names must be unique")
            self.tools[t.name] = t
        self.instructions = instructions
        self.requirements = _requirements(requirements)
        self.budget = Budget.coerce(budget)
        self.store: RunStore = store if store is not None else InMemoryRunStore()
        self.approval = approval
        self.output_type = output_type
        self._output_adapter = None if output_type is None else pydantic.TypeAdapter(output_type)
        self.name = name
        # JSON-serialisable facts stored with each run (e.g. how a CLI can rebuild this agent
        # to resume it); the loop does not read them.
        self.metadata = dict(metadata or {})

    # --- public entry points -----------------------------------------------------------------

    async def run(
        self,
        task: str,
        *,
        requirements: Sequence[Requirement | str] | None = None,
        budget: Budget | str | None = None,
        run_id: str | None = None,
        user_id: str | None = None,
    ) -> RunResult:
        """Run one task to the end and return its result (see the module docstring)."""
        return await self._start(task, requirements, budget, run_id, user_id, _discard)

    def run_sync(self, task: str, **kwargs: Any) -> RunResult:
        """``run`` for code without an event loop (scripts, notebooks without await)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run(task, **kwargs))
        raise UserError("run_sync was called inside a running event loop; use `await agent.run`")

    async def run_stream(
        self,
        task: str,
        *,
        requirements: Sequence[Requirement | str] | None = None,
        budget: Budget | str | None = None,
        run_id: str | None = None,
        user_id: str | None = None,
    ) -> AsyncIterator[Event]:
        """The run's events as they happen, ending with ``RunFinished``. Leaving the loop early
        (``break``, or cancelling the consumer) cancels the run."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()

        async def sink(event: Event) -> None:
            queue.put_nowait(event)

        async def produce() -> RunResult:
            try:
                return await self._start(task, requirements, budget, run_id, user_id, sink)
            finally:
                queue.put_nowait(None)

        runner = asyncio.create_task(produce())
        try:
            while (event := await queue.get()) is not None:
                yield event
            await runner
        finally:
            if not runner.done():
                runner.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(runner, return_exceptions=True)

    async def resume(
        self, run_id: str, *, requirements: Sequence[Requirement | str] | None = None
    ) -> RunResult:
        """Continue a run from its store: finished steps are replayed, not executed again.

        Python checks of run-level requirements cannot be stored; pass ``requirements`` again
        to keep them (otherwise those requirements are judged by the model).
        """
        record = await self.store.get_run(run_id)
        if record is None:
            raise UserError(f"no run {run_id!r} in {type(self.store).__name__}")
        steps = await self.store.get_steps(run_id)
        finished = {s.key: s for s in steps if s.finished}
        payload = record.payload
        reqs = (
            _requirements(requirements)
            if requirements is not None
            else [Requirement.from_dict(r) for r in payload.get("requirements", [])]
        )
        budget = Budget.from_dict(payload["budget"]) if "budget" in payload else self.budget
        return await self._execute(
            task=record.task,
            run_requirements=reqs,
            budget=budget,
            run_id=run_id,
            user_id=record.user_id,
            sink=_discard,
            finished=finished,
        )

    async def chat(
        self,
        message: str | None,
        *,
        history: Sequence[Message] = (),
        budget: Budget | str | None = None,
        max_turns: int = 8,
        on_event: EventCallback | None = None,
    ) -> ChatResult:
        """One assistant turn with direct tool calling (no plan, no requirement rounds).

        ``history`` is the conversation so far (``ChatResult.messages`` of the previous turn);
        ``on_event`` receives TextDelta / ToolCall* / ApprovalRequested / BudgetUpdate events.
        """
        loop = ChatLoop(
            model=self.model,
            tools=self.tools,
            instructions=self.instructions,
            budget=self.budget if budget is None else Budget.coerce(budget),
            approval=self.approval,
            on_event=on_event,
            agent_name=self.name,
        )
        return await loop.run(message, list(history), max_turns)

    # --- the run -------------------------------------------------------------------------------

    async def _start(
        self,
        task: str,
        requirements: Sequence[Requirement | str] | None,
        budget: Budget | str | None,
        run_id: str | None,
        user_id: str | None,
        sink: Any,
    ) -> RunResult:
        if not task.strip():
            raise UserError("the task is empty")
        run_budget = self.budget if budget is None else Budget.coerce(budget)
        new_id = run_id or f"run_{uuid.uuid4().hex[:16]}"
        reqs = _requirements(requirements or [])
        payload = {
            "budget": run_budget.to_dict(),
            "requirements": [r.to_dict() for r in reqs],
            "output_type": getattr(self.output_type, "__name__", None),
        }
        if self.metadata:
            payload["metadata"] = self.metadata
        await self.store.create_run(
            RunRecord(id=new_id, task=task, agent_name=self.name, user_id=user_id, payload=payload)
        )
        return await self._execute(
            task=task,
            run_requirements=reqs,
            budget=run_budget,
            run_id=new_id,
            user_id=user_id,
            sink=sink,
            finished=None,
        )

    async def _execute(
        self,
        *,
        task: str,
        run_requirements: list[Requirement],
        budget: Budget,
        run_id: str,
        user_id: str | None,
        sink: Any,
        finished: dict[str, StepRecord] | None,
    ) -> RunResult:
        store = self.store

        async def emit(event: Event) -> None:
            # Token deltas and budget ticks are for live consumers; the stored event log keeps
            # what a reader needs to reconstruct the run.
            # A model step's start is live-only too: storing it would suspend between
            # admitting a model call and making it (see RunContext._call_model_reserved).
            live_only = isinstance(event, TextDelta | BudgetUpdate) or (
                isinstance(event, StepStarted) and event.kind != "tool"
            )
            if not live_only:
                await store.append_event(run_id, event.to_dict())
            await sink(event)

        names = {r.name for r in run_requirements}
        requirements = [r for r in self.requirements if r.name not in names] + run_requirements
        tracker = BudgetTracker(budget)
        ctx = RunContext(
            run_id=run_id,
            agent_name=self.name,
            model=self.model,
            store=store,
            tracker=tracker,
            sink=emit,
            finished_steps=finished or {},
        )
        state = RunState()
        status: RunStatus = "completed"
        error: str | None = None
        await emit(
            RunStarted(run_id=run_id, task=task, agent_name=self.name, resumed=finished is not None)
        )
        attributes = {
            tracing.OPERATION: "invoke_agent",
            tracing.AGENT_NAME: self.name,
            tracing.REQUEST_MODEL: self.model.model_name,
            tracing.CONVERSATION_ID: run_id,
        }
        with tracing.span(f"invoke_agent {self.name}", attributes) as span:
            try:
                remaining = tracker.remaining_seconds()
                with anyio.move_on_after(math.inf if remaining is None else remaining) as scope:
                    finish_reason = await self._body(ctx, state, task, requirements, budget)
                if scope.cancelled_caught:
                    finish_reason = "max_wall_time"
            except BudgetExceeded as exc:
                finish_reason = exc.reason
            except ModelError as exc:
                status, finish_reason, error = "failed", "model_error", str(exc)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await self._close(ctx, state, requirements, budget, "cancelled", None)
                raise
            except Exception as exc:
                # A bug or misuse (e.g. a check returning a str): the caller gets the
                # exception, and the stored run is closed as failed rather than left running.
                with anyio.CancelScope(shield=True):
                    await self._close(ctx, state, requirements, budget, "failed", repr(exc))
                raise
            span.set_attribute(tracing.INPUT_TOKENS, tracker.usage.input_tokens)
            span.set_attribute(tracing.OUTPUT_TOKENS, tracker.usage.output_tokens)
        result = build_result(ctx, state, requirements, budget, finish_reason, status)
        result.error = error
        summary = result.to_dict()
        await store.finish_run(run_id, status, summary)
        await emit(
            RunFinished(run_id=run_id, result=summary, finish_reason=finish_reason, status=status)
        )
        return result

    async def _close(
        self,
        ctx: RunContext,
        state: RunState,
        requirements: list[Requirement],
        budget: Budget,
        status: RunStatus,
        error: str | None,
    ) -> None:
        reason = "cancelled" if status == "cancelled" else "error"
        result = build_result(ctx, state, requirements, budget, reason, status)
        result.error = error
        summary = result.to_dict()
        await self.store.finish_run(ctx.run_id, status, summary)
        await ctx.emit(
            RunFinished(run_id=ctx.run_id, result=summary, finish_reason=reason, status=status)
        )

    async def _body(
        self,
        ctx: RunContext,
        state: RunState,
        task: str,
        requirements: list[Requirement],
        budget: Budget,
    ) -> str:
        if self.tools and budget.max_plan_steps > 0:
            await self._plan_and_execute(ctx, state, task, budget)
        refiner = Refiner(
            ctx,
            task=task,
            instructions=self.instructions,
            context=describe_outcomes(state.outcomes.values()),
            requirements=requirements,
            budget=budget,
            output_adapter=self._output_adapter,
        )
        state.refiner = refiner
        await refiner.run()
        return refiner.finish_reason

    async def _plan_and_execute(
        self, ctx: RunContext, state: RunState, task: str, budget: Budget
    ) -> None:
        context = ""
        for attempt in range(budget.max_replans + 1):
            key = "plan" if attempt == 0 else f"plan:r{attempt}"
            try:
                plan = await make_plan(
                    ctx,
                    task=task,
                    tools=self.tools,
                    max_steps=budget.max_plan_steps,
                    instructions=self.instructions,
                    key=key,
                    context=context,
                )
            except UnexpectedModelBehavior as exc:
                # No usable plan: answer without tools rather than fail the run; the trace
                # shows why.
                ctx.trace.append(TraceStep(key, "plan", "failed", time.time(), 0.0, str(exc)))
                return
            if attempt == 0:
                state.plan = plan
            await ctx.emit(PlanMade(run_id=ctx.run_id, plan=plan.model_dump(), attempt=attempt))
            if not plan.steps:
                return
            prefix = "" if attempt == 0 else f"r{attempt}."
            executor = PlanExecutor(
                ctx, self.tools, task=task, approval=self.approval, key_prefix=prefix
            )
            try:
                outcomes = await executor.run(plan)
            finally:
                state.outcomes.update({f"{prefix}{k}": v for k, v in executor.outcomes.items()})
            failed = [o for o in outcomes.values() if o.status == "failed"]
            if not failed:
                return
            context = (
                "An earlier plan was partly executed. Plan only what is still missing; do not "
                "repeat steps that succeeded, and avoid the failures.\n"
                + describe_outcomes(state.outcomes.values())
            )


def _as_tool(item: Any) -> Tool:
    if not callable(item):
        raise UserError(f"{item!r} is not a Tool or a function; decorate it with @tool")
    return tool(item)


def _requirements(items: Sequence[Requirement | str]) -> list[Requirement]:
    """Requirements, where a plain string is a model-judged, non-mandatory requirement."""
    return [Requirement(r) if isinstance(r, str) else r for r in items]


async def _discard(event: Event) -> None:
    return None


__all__ = ["Agent", "RunResult"]
