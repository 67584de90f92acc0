"""The live run view's state: events folded into plain data, no widgets involved.

The run widgets (plan tree, tool calls, scoreboard, budget meter) render a :class:`RunView`;
:meth:`RunView.apply` is the only place that knows how an event changes it. Keeping the fold
pure means the rules ("a step whose tool call asked for a retry shows *retried*", "a plan
step nobody started yet is *pending*") are tested without a terminal, and a resumed run can be
rebuilt by replaying its stored events through the same function.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from maestro.events import (
    AnyEvent,
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

StepState = Literal[
    "pending", "running", "retried", "done", "failed", "skipped", "denied", "cancelled"
]
Region = Literal["plan", "tools", "requirements", "budget", "text", "status"]

_FINISHED_STATE: dict[str, StepState] = {
    "succeeded": "done",
    "completed": "done",
    "done": "done",
    "failed": "failed",
    "skipped": "skipped",
    "denied": "denied",
}


@dataclass(slots=True)
class StepView:
    key: str
    label: str
    kind: str
    state: StepState = "pending"
    tool: str | None = None
    depends_on: list[str] = field(default_factory=list)
    retries: int = 0
    duration_s: float | None = None
    error: str | None = None


@dataclass(slots=True)
class ToolCallView:
    step_key: str
    tool: str
    args: dict[str, Any]
    attempt: int = 0
    result: str | None = None
    error: str | None = None
    retry: bool = False
    finished: bool = False
    approval: str | None = None  # "asked", "approved", "denied"


@dataclass(slots=True)
class RequirementView:
    name: str
    score: float
    reason: str
    passed: bool
    round: int
    history: list[float] = field(default_factory=list)


@dataclass(slots=True)
class RunView:
    """Everything the run panel shows about one run."""

    run_id: str = ""
    task: str = ""
    status: str = "idle"  # idle | running | completed | failed | cancelled | ...
    steps: dict[str, StepView] = field(default_factory=dict)
    tool_calls: list[ToolCallView] = field(default_factory=list)
    requirements: dict[str, RequirementView] = field(default_factory=dict)
    fix_rounds: list[FixRound] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    answer: str = ""
    answer_key: str = ""  # the step whose text is streaming; a new step's text replaces it
    finish_reason: str = ""
    error: str = ""  # what went wrong, when the run failed
    started_at: float | None = None
    finished_at: float | None = None
    resumed: bool = False

    @property
    def outcome(self) -> str:
        """Why the run ended, in words: the finish reason and the error, if any."""
        if self.error and self.error not in self.finish_reason:
            return f"{self.finish_reason}: {self.error}" if self.finish_reason else self.error
        return self.finish_reason

    @property
    def active(self) -> bool:
        return self.status == "running"

    def elapsed(self, now: float | None = None) -> float:
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else (now or time.time())
        return max(0.0, end - self.started_at)

    def apply(self, event: AnyEvent | Event) -> set[Region]:
        """Fold one event in; returns the regions whose display changed."""
        match event:
            case RunStarted():
                self.__init__()  # type: ignore[misc]  # a new run starts from a clean slate
                self.run_id, self.task, self.status = event.run_id, event.task, "running"
                self.started_at, self.resumed = event.ts, event.resumed
                return {"plan", "tools", "requirements", "budget", "text", "status"}
            case PlanMade():
                self._apply_plan(event.plan)
                return {"plan"}
            case StepStarted():
                step = self._step(event.key, event.kind, event.description)
                step.state = "retried" if step.state in ("failed", "retried") else "running"
                return {"plan"}
            case StepFinished():
                step = self._step(event.key, event.kind, "")
                step.state = _FINISHED_STATE.get(event.status, "failed")
                step.retries = max(step.retries, event.retried)
                step.duration_s = event.duration_s
                step.error = event.error
                return {"plan"}
            case ToolCallStarted():
                self.tool_calls.append(
                    ToolCallView(event.step_key, event.tool, dict(event.args), event.attempt)
                )
                step = self._step(event.step_key, "tool", event.tool)
                if event.attempt > 0:
                    step.state, step.retries = "retried", max(step.retries, event.attempt)
                elif step.state == "pending":
                    step.state = "running"
                return {"tools", "plan"}
            case ToolCallFinished():
                call = self._open_call(event.step_key, event.tool)
                if call is not None:
                    call.result, call.error = event.result, event.error
                    call.retry, call.finished = event.retry, True
                return {"tools"}
            case ApprovalRequested():
                call = self._open_call(event.step_key, event.tool)
                if call is None:
                    call = ToolCallView(event.step_key, event.tool, dict(event.args))
                    self.tool_calls.append(call)
                call.approval = "asked"
                return {"tools"}
            case TextDelta():
                if event.key != self.answer_key:
                    self.answer, self.answer_key = "", event.key
                self.answer += event.text
                return {"text"}
            case RequirementScored():
                prev = self.requirements.get(event.requirement)
                history = [*prev.history, event.score] if prev else [event.score]
                self.requirements[event.requirement] = RequirementView(
                    event.requirement, event.score, event.reason, event.passed, event.round, history
                )
                return {"requirements"}
            case FixRound():
                self.fix_rounds.append(event)
                return {"requirements"}
            case BudgetUpdate():
                self.usage, self.limits = dict(event.usage), dict(event.limits)
                return {"budget"}
            case RunFinished():
                self.status = event.status
                self.finish_reason = event.finish_reason
                self.finished_at = event.ts
                error = event.result.get("error")
                self.error = error if isinstance(error, str) else ""
                answer = event.result.get("answer")
                if isinstance(answer, str) and answer:
                    self.answer = answer
                usage = event.result.get("usage")
                if isinstance(usage, dict) and usage:
                    self.usage = {**self.usage, **usage}
                self._settle_steps()
                return {"plan", "budget", "status", "text"}
        return set()

    def mark_cancelled(self) -> None:
        """The user cancelled: what was running stops being 'running'."""
        self.status = "cancelled"
        self.finish_reason = "cancelled by the user"
        self.finished_at = time.time()
        self._settle_steps()

    def record_decision(self, step_key: str, tool: str, approved: bool) -> None:
        call = self._open_call(step_key, tool)
        if call is not None:
            call.approval = "approved" if approved else "denied"

    # --- helpers ------------------------------------------------------------------------------

    def _apply_plan(self, plan: dict[str, Any]) -> None:
        for raw in plan.get("steps", []):
            if not isinstance(raw, dict) or "id" not in raw:
                continue
            key = f"tool:{raw['id']}"
            tool = raw.get("tool")
            step = self._step(key, "tool", "")
            step.tool = tool if isinstance(tool, str) else None
            step.label = f"{raw['id']}: {tool}" if tool else f"{raw['id']}: (answer)"
            step.depends_on = [str(d) for d in raw.get("depends_on", [])]

    def _step(self, key: str, kind: str, description: str) -> StepView:
        step = self.steps.get(key)
        if step is None:
            step = StepView(key, description or _label_for(key), kind)
            self.steps[key] = step
        return step

    def _open_call(self, step_key: str, tool: str) -> ToolCallView | None:
        for call in reversed(self.tool_calls):
            if call.step_key == step_key and call.tool == tool:
                return call
        return None

    def _settle_steps(self) -> None:
        """The run is over: nothing may still look like it is running."""
        unfinished: StepState = "failed"
        if self.status == "completed":
            unfinished = "done"
        elif self.status == "cancelled":
            unfinished = "cancelled"
        for step in self.steps.values():
            if step.state in ("running", "retried"):
                step.state = unfinished
            elif step.state == "pending" and self.status != "completed":
                step.state = "skipped"


def _label_for(key: str) -> str:
    """Readable names for the loop's step keys (``draft:0:1`` -> ``draft (round 0, #1)``)."""
    parts = key.split(":")
    head = parts[0]
    if head == "draft" and len(parts) == 3:
        return f"draft (round {parts[1]}, candidate {parts[2]})"
    if head == "validate" and len(parts) >= 4:
        return f"check {parts[3]} (round {parts[1]})"
    if head == "tool" and len(parts) == 2:
        return parts[1]
    return key


__all__ = ["Region", "RequirementView", "RunView", "StepState", "StepView", "ToolCallView"]
