"""The persistence seam for durable runs: records, the ``RunStore`` protocol, an in-memory store.

A run is a row (:class:`RunRecord`) plus the steps it finished (:class:`StepRecord`). Every
step has a *key* that is stable and deterministic within a run — ``"plan"``,
``"tool:<step_id>"``, ``"draft:<round>:<candidate>"``, ``"validate:<round>:<candidate>:<req>"``
— so a resumed run can look up what it already did. ``Agent.resume(run_id)`` replays finished
steps from the store instead of executing them again: a crash never re-runs a finished tool
call. A step that had started but not finished is executed again with the same
``idempotency_key`` so side-effecting tools can deduplicate.

Stores: :class:`InMemoryRunStore` here (tests, single process); an SQL store in
``maestro.memory`` implements the same protocol. ``save_step`` must be durable before it
returns; saving a step with an existing ``(run_id, key)`` replaces it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

RunStatus = Literal["running", "completed", "failed", "cancelled"]
StepStatus = Literal["running", "succeeded", "failed", "skipped", "denied"]
StepKind = Literal["plan", "tool", "draft", "validate", "repair", "judge"]


@dataclass(slots=True)
class RunRecord:
    """One run. ``payload`` holds what resuming needs (task, budget, requirement texts)."""

    id: str
    task: str
    status: RunStatus = "running"
    created_at: float = field(default_factory=time.time)
    agent_name: str = "agent"
    user_id: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    finished_at: float | None = None


@dataclass(slots=True)
class StepRecord:
    """One step of a run; ``output`` is JSON-safe and enough to replay the step."""

    run_id: str
    key: str
    kind: str
    status: StepStatus
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    idempotency_key: str | None = None

    @property
    def finished(self) -> bool:
        return self.status != "running"


@runtime_checkable
class RunStore(Protocol):
    """Where runs and their steps live. All methods are async; implementations must be safe
    to call from concurrent tasks of one event loop."""

    async def create_run(self, run: RunRecord) -> None: ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def save_step(self, step: StepRecord) -> None: ...

    async def get_steps(self, run_id: str) -> list[StepRecord]: ...

    async def finish_run(
        self, run_id: str, status: RunStatus, result: dict[str, Any] | None
    ) -> None: ...

    async def append_event(self, run_id: str, event: dict[str, Any]) -> None: ...


def _json_copy(value: Any) -> Any:
    # A JSON round trip rather than deepcopy: it is several times faster for plain data, and
    # it fails on what a SQL store could not store either, so tests catch non-JSON payloads.
    return json.loads(json.dumps(value))


def _copy_step(step: StepRecord) -> StepRecord:
    return dataclasses.replace(
        step,
        input=_json_copy(step.input),
        output=None if step.output is None else _json_copy(step.output),
    )


class InMemoryRunStore:
    """A RunStore in dicts. Copies on the way in and out, as a database would."""

    def __init__(self) -> None:
        self.runs: dict[str, RunRecord] = {}
        self.steps: dict[str, dict[str, StepRecord]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}

    async def create_run(self, run: RunRecord) -> None:
        self.runs[run.id] = copy.deepcopy(run)
        self.steps.setdefault(run.id, {})
        self.events.setdefault(run.id, [])

    async def get_run(self, run_id: str) -> RunRecord | None:
        run = self.runs.get(run_id)
        return copy.deepcopy(run) if run else None

    async def save_step(self, step: StepRecord) -> None:
        self.steps.setdefault(step.run_id, {})[step.key] = _copy_step(step)

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        return [_copy_step(s) for s in self.steps.get(run_id, {}).values()]

    async def finish_run(
        self, run_id: str, status: RunStatus, result: dict[str, Any] | None
    ) -> None:
        run = self.runs[run_id]
        run.status = status
        run.result = None if result is None else _json_copy(result)
        run.finished_at = time.time()

    async def append_event(self, run_id: str, event: dict[str, Any]) -> None:
        # Event dicts come from Event.to_dict(), already fresh JSON-safe copies.
        self.events.setdefault(run_id, []).append(dict(event))


__all__ = ["InMemoryRunStore", "RunRecord", "RunStatus", "RunStore", "StepRecord", "StepStatus"]
