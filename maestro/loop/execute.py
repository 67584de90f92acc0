"""Execute a plan: independent steps run concurrently; every outcome is recorded.

Each step waits for the steps it depends on, then runs in its own task of one task group, so
two independent tool calls overlap (a slow search never delays a calculator). A step whose
dependency failed is *skipped*, not run with missing inputs.

Per step, in order: replay from the journal if a previous attempt finished it; ask for
approval if the tool requires it (denied → the tool never runs); check the tool-call budget;
call the tool. Bad arguments (pydantic validation) and ``ToolRetry`` go back to the model as
an error tool result and the model sends corrected arguments (bounded by the tool's
``max_retries``); a ``ToolError`` fails the step. The step is saved as ``running`` before the
tool runs and as finished after, with an idempotency key that is the same on resume.

``BudgetExceeded`` inside a step is held and re-raised after the group finishes, so the
caller sees one clean control-flow exception instead of an exception group.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from maestro import tracing
from maestro.errors import (
    BudgetExceeded,
    ModelError,
    ToolError,
    ToolRetry,
    UnexpectedModelBehavior,
)
from maestro.events import (
    ApprovalRequested,
    StepFinished,
    StepStarted,
    ToolCallFinished,
    ToolCallStarted,
)
from maestro.loop.context import RunContext, extract_json
from maestro.loop.plan import REFERENCE, Plan, PlanStep
from maestro.messages import (
    AssistantMessage,
    Message,
    ModelRequestOptions,
    SystemMessage,
    ToolCall,
    ToolResultMessage,
    UserMessage,
)
from maestro.tool import Tool, ToolContext, result_to_jsonable, result_to_text


@dataclass(slots=True)
class ApprovalRequest:
    """What an approval callback decides on; return True to let the tool run."""

    run_id: str
    step_key: str
    tool: str
    args: dict[str, Any]
    description: str


ApprovalCallback = Callable[[ApprovalRequest], bool | Awaitable[bool]]


@dataclass(slots=True)
class StepOutcome:
    step_id: str
    key: str
    tool: str | None
    args: dict[str, Any]
    status: str  # succeeded | failed | skipped | denied
    value: Any = None
    text: str = ""
    error: str | None = None
    retried: int = 0
    replayed: bool = False
    duration_s: float = 0.0

    @property
    def usable(self) -> bool:
        """Whether dependents may run: succeeded, or a tool-less note (skipped, no error)."""
        return self.status == "succeeded" or (self.status == "skipped" and self.error is None)

    def to_output(self) -> dict[str, Any]:
        return {
            "step_id": self.step_id,
            "tool": self.tool,
            "args": self.args,
            "status": self.status,
            "value": self.value,
            "text": self.text,
            "error": self.error,
            "retried": self.retried,
        }

    @classmethod
    def from_output(cls, key: str, data: dict[str, Any]) -> StepOutcome:
        return cls(
            step_id=data["step_id"],
            key=key,
            tool=data.get("tool"),
            args=data.get("args", {}),
            status=data["status"],
            value=data.get("value"),
            text=data.get("text", ""),
            error=data.get("error"),
            retried=int(data.get("retried", 0)),
            replayed=True,
        )


def substitute(value: Any, outcomes: dict[str, StepOutcome]) -> Any:
    """Replace ``{{id}}`` references with step results (the raw value when the whole string
    is one reference, so numbers stay numbers)."""
    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value.strip())
        if whole and whole.group(1) in outcomes:
            return outcomes[whole.group(1)].value
        return REFERENCE.sub(
            lambda m: outcomes[m.group(1)].text if m.group(1) in outcomes else m.group(0), value
        )
    if isinstance(value, dict):
        return {k: substitute(v, outcomes) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, outcomes) for v in value]
    return value


class PlanExecutor:
    """Runs one plan's steps against the agent's tools (see the module docstring)."""

    def __init__(
        self,
        ctx: RunContext,
        tools: dict[str, Tool],
        *,
        task: str,
        approval: ApprovalCallback | None,
        key_prefix: str = "",
    ) -> None:
        self.ctx = ctx
        self.tools = tools
        self.task = task
        self.approval = approval
        self.prefix = key_prefix
        self.outcomes: dict[str, StepOutcome] = {}
        self._budget_stop: BudgetExceeded | None = None

    async def run(self, plan: Plan) -> dict[str, StepOutcome]:
        done = {step.id: anyio.Event() for step in plan.steps}

        async def run_one(step: PlanStep) -> None:
            try:
                for dep in step.depends_on:
                    await done[dep].wait()
                self.outcomes[step.id] = await self._run_step(step)
            finally:
                done[step.id].set()

        try:
            async with anyio.create_task_group() as group:
                for step in plan.steps:
                    group.start_soon(run_one, step)
        except BaseExceptionGroup as group_error:
            # One failing step (a provider error during repair, a bug in a tool definition)
            # surfaces as itself, not wrapped, so callers can catch it by type.
            if len(group_error.exceptions) == 1:
                raise group_error.exceptions[0] from None
            raise
        if self._budget_stop is not None:
            raise self._budget_stop
        return self.outcomes

    async def _finish(
        self, outcome: StepOutcome, started: float, idempotency_key: str | None
    ) -> StepOutcome:
        outcome.duration_s = time.time() - started
        await self.ctx.save_step(
            key=outcome.key,
            kind="tool",
            status=outcome.status,  # type: ignore[arg-type]
            started_at=started,
            input={"tool": outcome.tool, "args": outcome.args},
            output=outcome.to_output(),
            error=outcome.error,
            idempotency_key=idempotency_key,
            detail={"tool": outcome.tool, "retried": outcome.retried},
        )
        await self.ctx.emit(
            StepFinished(
                run_id=self.ctx.run_id,
                key=outcome.key,
                kind="tool",
                status=outcome.status,
                result=outcome.text[:2000] if outcome.status == "succeeded" else None,
                error=outcome.error,
                retried=outcome.retried,
                duration_s=outcome.duration_s,
            )
        )
        return outcome

    async def _run_step(self, step: PlanStep) -> StepOutcome:
        key = f"tool:{self.prefix}{step.id}"
        record = self.ctx.replayable(key)
        if record is not None and record.output is not None:
            self.ctx.note_replayed(record)
            outcome = StepOutcome.from_output(key, record.output)
            await self.ctx.emit(
                StepFinished(
                    run_id=self.ctx.run_id,
                    key=key,
                    kind="tool",
                    status=outcome.status,
                    result=outcome.text[:2000],
                    error=outcome.error,
                    replayed=True,
                )
            )
            return outcome
        started = time.time()
        args = substitute(step.args, self.outcomes)
        outcome = StepOutcome(step.id, key, step.tool, args, "failed")
        failed_deps = [d for d in step.depends_on if not self.outcomes[d].usable]
        if step.tool is None or failed_deps:
            outcome.status = "skipped"
            outcome.error = (
                f"depends on unsuccessful step(s) {failed_deps}" if failed_deps else None
            )
            return await self._finish(outcome, started, None)
        tool = self.tools[step.tool]
        idem = self.ctx.idempotency_key(key)
        await self.ctx.emit(
            StepStarted(
                run_id=self.ctx.run_id,
                key=key,
                kind="tool",
                description=step.purpose or f"{tool.name}({json.dumps(args)[:200]})",
            )
        )
        await self.ctx.save_step(
            key=key,
            kind="tool",
            status="running",
            started_at=started,
            input={"tool": tool.name, "args": args},
            idempotency_key=idem,
        )
        approved = False
        if tool.requires_approval:
            approved, why = await self._ask_approval(key, tool, args)
            if not approved:
                outcome.status, outcome.error = "denied", f"approval denied: {why}"
                return await self._finish(outcome, started, idem)
        try:
            await self._call_with_retries(outcome, tool, idem, approved, step)
        except BudgetExceeded as exc:
            outcome.status, outcome.error = "failed", f"budget: {exc}"
            self._budget_stop = self._budget_stop or exc
        return await self._finish(outcome, started, idem)

    async def _call_with_retries(
        self, outcome: StepOutcome, tool: Tool, idem: str, approved: bool, step: PlanStep
    ) -> None:
        call_id = f"{self.prefix}{step.id}"
        while True:
            self.ctx.tracker.check_tool_call()
            self.ctx.tracker.record_tool_call()
            await self.ctx.budget_update()
            await self.ctx.emit(
                ToolCallStarted(
                    run_id=self.ctx.run_id,
                    step_key=outcome.key,
                    tool=tool.name,
                    args=outcome.args,
                    attempt=outcome.retried,
                )
            )
            tool_ctx = ToolContext(
                run_id=self.ctx.run_id,
                step_id=outcome.key,
                idempotency_key=idem,
                tool_call_id=call_id,
                attempt=outcome.retried,
                approved=approved,
            )
            attributes = {
                tracing.OPERATION: "execute_tool",
                tracing.TOOL_NAME: tool.name,
                tracing.TOOL_CALL_ID: call_id,
            }
            try:
                with tracing.span(f"execute_tool {tool.name}", attributes):
                    value = await tool.call(outcome.args, tool_ctx)
            except ToolRetry as exc:
                await self._tool_finished(outcome, tool, error=exc.message, retry=True)
                if outcome.retried >= tool.max_retries:
                    outcome.error = f"gave up after {outcome.retried} retries: {exc.message}"
                    return
                outcome.retried += 1
                try:
                    outcome.args = await self._repair(step, tool, outcome, exc.message)
                except ModelError as bad:
                    outcome.error = f"{exc.message} (repair failed: {bad})"
                    return
                continue
            except ToolError as exc:
                outcome.error = str(exc)
                await self._tool_finished(outcome, tool, error=outcome.error)
                return
            outcome.status = "succeeded"
            outcome.value = result_to_jsonable(value)
            outcome.text = result_to_text(value)
            await self._tool_finished(outcome, tool, result=outcome.text)
            return

    async def _tool_finished(
        self,
        outcome: StepOutcome,
        tool: Tool,
        *,
        result: str | None = None,
        error: str | None = None,
        retry: bool = False,
    ) -> None:
        await self.ctx.emit(
            ToolCallFinished(
                run_id=self.ctx.run_id,
                step_key=outcome.key,
                tool=tool.name,
                result=None if result is None else result[:2000],
                error=error,
                retry=retry,
            )
        )

    async def _ask_approval(self, key: str, tool: Tool, args: dict[str, Any]) -> tuple[bool, str]:
        await self.ctx.emit(
            ApprovalRequested(run_id=self.ctx.run_id, step_key=key, tool=tool.name, args=args)
        )
        if self.approval is None:
            return False, "no approval callback is configured (Agent(approval=...))"
        request = ApprovalRequest(self.ctx.run_id, key, tool.name, args, tool.description)
        decision = self.approval(request)
        if inspect.isawaitable(decision):
            decision = await decision
        return bool(decision), "refused by the approval callback"

    async def _repair(
        self, step: PlanStep, tool: Tool, outcome: StepOutcome, message: str
    ) -> dict[str, Any]:
        """Send the failed call and its error back to the model; return corrected arguments."""
        call_id = f"{self.prefix}{step.id}"
        messages: list[Message] = [
            SystemMessage(
                "You call tools for an agent. The last tool call was rejected; call the tool "
                "again with corrected arguments that match its schema."
            ),
            UserMessage(f"Task: {self.task}\nStep {step.id}: {step.purpose or tool.description}"),
            AssistantMessage(None, [ToolCall(call_id, tool.name, outcome.args)]),
            ToolResultMessage(call_id, tool.name, message, is_error=True),
        ]
        options = ModelRequestOptions(tools=[tool.definition], tool_choice=tool.name)
        key = f"repair:{self.prefix}{step.id}:{outcome.retried}"
        response = await self.ctx.call_model(key, "repair", messages, options)
        for call in response.message.tool_calls:
            if call.name == tool.name:
                return call.arguments
        try:
            value = json.loads(extract_json(response.text))
        except json.JSONDecodeError as exc:
            raise UnexpectedModelBehavior("the model sent no corrected tool call") from exc
        if not isinstance(value, dict):
            raise UnexpectedModelBehavior("the model's corrected arguments are not an object")
        return value
