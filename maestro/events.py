"""Typed events of a run: the one stream the TUI, the CLI and the server all consume.

Every event is a frozen dataclass with ``run_id``, ``ts`` (Unix seconds) and a ``type``
discriminator, and ``to_dict()`` gives a JSON-safe dict (``{"type": ..., "run_id": ..., ...}``)
for SSE and the run store. Consume them with::

    async for event in agent.run_stream(task):
        match event:
            case TextDelta(text=t): print(t, end="")
            case RunFinished(result=r): ...

Order within a run: RunStarted, PlanMade, StepStarted/StepFinished (tool steps interleave when
they run concurrently, with ToolCallStarted/ToolCallFinished and ApprovalRequested inside),
TextDelta while drafting, RequirementScored, FixRound, BudgetUpdate after each model or tool
call, and RunFinished last — always, whatever the outcome.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pydantic_core


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    type: ClassVar[str] = "event"
    run_id: str
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            data[f.name] = pydantic_core.to_jsonable_python(getattr(self, f.name), fallback=str)
        return data


@dataclass(frozen=True, kw_only=True, slots=True)
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    task: str
    agent_name: str = "agent"
    resumed: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanMade(Event):
    """``plan`` is the plan as a dict: ``{"rationale", "steps": [{id, tool, args, depends_on}]}``."""

    type: ClassVar[str] = "plan_made"
    plan: dict[str, Any]
    attempt: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class StepStarted(Event):
    type: ClassVar[str] = "step_started"
    key: str
    kind: str
    description: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class StepFinished(Event):
    type: ClassVar[str] = "step_finished"
    key: str
    kind: str
    status: str
    result: Any = None
    error: str | None = None
    retried: int = 0
    replayed: bool = False
    duration_s: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class TextDelta(Event):
    type: ClassVar[str] = "text_delta"
    text: str
    key: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallStarted(Event):
    type: ClassVar[str] = "tool_call_started"
    step_key: str
    tool: str
    args: dict[str, Any]
    attempt: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallFinished(Event):
    type: ClassVar[str] = "tool_call_finished"
    step_key: str
    tool: str
    result: str | None = None
    error: str | None = None
    retry: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalRequested(Event):
    type: ClassVar[str] = "approval_requested"
    step_key: str
    tool: str
    args: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class RequirementScored(Event):
    type: ClassVar[str] = "requirement_scored"
    requirement: str
    score: float
    reason: str
    round: int
    candidate: int = 0
    passed: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class FixRound(Event):
    type: ClassVar[str] = "fix_round"
    round: int
    failing: list[str]


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetUpdate(Event):
    """``usage``: what was spent so far; ``limits``: the hard caps (None = no cap)."""

    type: ClassVar[str] = "budget_update"
    usage: dict[str, Any]
    limits: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class RunFinished(Event):
    """``result`` is a summary: answer, score, passed, usage; ``finish_reason`` says why."""

    type: ClassVar[str] = "run_finished"
    result: dict[str, Any]
    finish_reason: str
    status: str = "completed"


AnyEvent = (
    RunStarted
    | PlanMade
    | StepStarted
    | StepFinished
    | TextDelta
    | ToolCallStarted
    | ToolCallFinished
    | ApprovalRequested
    | RequirementScored
    | FixRound
    | BudgetUpdate
    | RunFinished
)

__all__ = [
    "AnyEvent",
    "ApprovalRequested",
    "BudgetUpdate",
    "Event",
    "FixRound",
    "PlanMade",
    "RequirementScored",
    "RunFinished",
    "RunStarted",
    "StepFinished",
    "StepStarted",
    "TextDelta",
    "ToolCallFinished",
    "ToolCallStarted",
]
