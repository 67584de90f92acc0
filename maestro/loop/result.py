"""What a run returns, and the state it accumulates on the way.

:class:`RunResult` is the public result of ``Agent.run``; :class:`RunState` is what a run has
so far (plan, step outcomes, the refiner with its best answer), kept outside the phases so a
run stopped by a budget cap or cancelled still returns everything it got —
:func:`build_result` turns that state into the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pydantic

from maestro.budget import Budget
from maestro.loop.context import RunContext, TraceStep
from maestro.loop.execute import StepOutcome
from maestro.loop.plan import Plan
from maestro.loop.refine import Refiner
from maestro.messages import Usage
from maestro.requirements import Requirement, RequirementsReport

_CONTEXT_EXCERPT = 4000


@dataclass(slots=True)
class RunResult:
    """Everything a run produced. ``output`` is the typed value when ``output_type`` was set."""

    run_id: str
    answer: str
    output: Any
    report: RequirementsReport
    usage: Usage
    finish_reason: str
    status: str = "completed"
    trace: list[TraceStep] = field(default_factory=list)
    data_sources: list[dict[str, Any]] = field(default_factory=list)
    plan: dict[str, Any] | None = None
    tool_calls: int = 0
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.report.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "answer": self.answer,
            "output": pydantic.TypeAdapter(Any).dump_python(self.output, mode="json"),
            "report": self.report.to_dict(),
            "usage": self.usage.to_dict(),
            "finish_reason": self.finish_reason,
            "status": self.status,
            "trace": [t.to_dict() for t in self.trace],
            "data_sources": self.data_sources,
            "plan": self.plan,
            "tool_calls": self.tool_calls,
            "error": self.error,
        }


@dataclass(slots=True)
class RunState:
    """What a run has so far; survives a budget stop so the result can be partial."""

    plan: Plan | None = None
    outcomes: dict[str, StepOutcome] = field(default_factory=dict)
    refiner: Refiner | None = None


def describe_outcomes(outcomes: Iterable[StepOutcome]) -> str:
    lines = []
    for o in outcomes:
        if o.status == "succeeded":
            lines.append(f"[{o.step_id}] {o.tool}({o.args}) -> {o.text[:_CONTEXT_EXCERPT]}")
        elif o.status in ("failed", "denied"):
            lines.append(f"[{o.step_id}] {o.tool}({o.args}) {o.status.upper()}: {o.error}")
    return "Tool results:\n" + "\n".join(lines) if lines else ""


def data_sources(outcomes: Iterable[StepOutcome]) -> list[dict[str, Any]]:
    sources: list[dict[str, Any]] = []
    for o in outcomes:
        if o.status != "succeeded":
            continue
        sources.append({"step": o.step_id, "tool": o.tool, "args": o.args, "excerpt": o.text[:500]})
        if isinstance(o.value, dict) and isinstance(o.value.get("sources"), list):
            sources.extend(s for s in o.value["sources"] if isinstance(s, dict))
    return sources


def build_result(
    ctx: RunContext,
    state: RunState,
    requirements: list[Requirement],
    budget: Budget,
    finish_reason: str,
    status: str,
) -> RunResult:
    refiner = state.refiner
    best = (refiner.best or refiner.latest) if refiner else None
    report = refiner.report if refiner else RequirementsReport(requirements)
    report.target_score = budget.target_score
    report.finish_reason = finish_reason
    if best is not None:
        report.score = best.score
    return RunResult(
        run_id=ctx.run_id,
        answer=best.text if best else "",
        output=best.output if best else None,
        report=report,
        usage=dataclasses.replace(ctx.tracker.usage),
        finish_reason=finish_reason,
        status=status,
        trace=list(ctx.trace),
        data_sources=data_sources(state.outcomes.values()),
        plan=state.plan.model_dump() if state.plan else None,
        tool_calls=ctx.tracker.tool_calls,
    )
