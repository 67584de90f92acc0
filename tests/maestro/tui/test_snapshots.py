"""SVG snapshots of the main screen (idle, mid-run, finished) at a fixed terminal size.

The run is a fixed list of events with fixed timestamps (a replayed run, not a live agent),
the clocks are frozen and the cursor does not blink, so the pictures only change when the
layout or the rendering does. Regenerate with ``pytest --snapshot-update`` and look at the
SVGs before committing them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest
from textual.pilot import Pilot

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
from maestro.llm.base import Model
from maestro.testing import FunctionModel, plan_step
from maestro.tui.app import MaestroApp, create_app
from maestro.tui.generation import GenerationMeter
from maestro.tui.services import RunRequest, Services, Store
from maestro.tui.stores import InMemoryStore
from maestro.tui.widgets.chat.chat_log import ChatLog
from maestro.tui.widgets.run.budget_meter import BudgetMeter

T0 = 1_790_000_000.0
RUN = "run_5a3f9c0d2e71"
TASK = "Compare Q3 revenue of ACME and Globex and email the summary to the CFO"
SNAPSHOT_SIZE = (150, 44)


def _at(offset: float) -> dict[str, object]:
    return {"run_id": RUN, "ts": T0 + offset}


BEFORE_ANSWER: list[Event] = [
    RunStarted(task=TASK, **_at(0)),
    PlanMade(
        plan={
            "rationale": "fetch both, compute the difference, then send",
            "steps": [
                plan_step("s1", "fetch_revenue", {"company": "ACME", "quarter": "Q3"}),
                plan_step("s2", "fetch_revenue", {"company": "Globex", "quarter": "Q3"}),
                plan_step(
                    "s3", "calculator", {"expression": "12.4 - 9.8"}, depends_on=["s1", "s2"]
                ),
                plan_step("s4", "send_email", {"to": "cfo@example.com"}, depends_on=["s3"]),
            ],
        },
        **_at(0.8),
    ),
    StepStarted(key="tool:s1", kind="tool", description="s1: fetch_revenue", **_at(0.9)),
    ToolCallStarted(
        step_key="tool:s1",
        tool="fetch_revenue",
        args={"company": "ACME", "quarter": "Q3"},
        **_at(0.9),
    ),
    StepStarted(key="tool:s2", kind="tool", description="s2: fetch_revenue", **_at(0.9)),
    ToolCallStarted(
        step_key="tool:s2",
        tool="fetch_revenue",
        args={"company": "Globex", "quarter": "3"},
        **_at(0.9),
    ),
    ToolCallFinished(step_key="tool:s1", tool="fetch_revenue", result="12.4M USD", **_at(1.4)),
    StepFinished(key="tool:s1", kind="tool", status="succeeded", duration_s=0.5, **_at(1.4)),
    ToolCallFinished(
        step_key="tool:s2",
        tool="fetch_revenue",
        error="quarter must look like Q1..Q4",
        retry=True,
        **_at(1.5),
    ),
    ToolCallStarted(
        step_key="tool:s2",
        tool="fetch_revenue",
        args={"company": "Globex", "quarter": "Q3"},
        attempt=1,
        **_at(1.9),
    ),
    ToolCallFinished(step_key="tool:s2", tool="fetch_revenue", result="9.8M USD", **_at(2.3)),
    StepFinished(
        key="tool:s2", kind="tool", status="succeeded", retried=1, duration_s=1.4, **_at(2.3)
    ),
    StepStarted(key="tool:s3", kind="tool", description="s3: calculator", **_at(2.4)),
    ToolCallStarted(
        step_key="tool:s3", tool="calculator", args={"expression": "12.4 - 9.8"}, **_at(2.4)
    ),
    ToolCallFinished(step_key="tool:s3", tool="calculator", result="2.6", **_at(2.4)),
    StepFinished(key="tool:s3", kind="tool", status="succeeded", duration_s=0.0, **_at(2.4)),
    StepStarted(key="tool:s4", kind="tool", description="s4: send_email", **_at(2.5)),
    ToolCallStarted(
        step_key="tool:s4", tool="send_email", args={"to": "cfo@example.com"}, **_at(2.5)
    ),
    BudgetUpdate(
        usage={
            "input_tokens": 1840,
            "output_tokens": 212,
            "requests": 2,
            "cost_usd": 0.0,
            "tool_calls": 5,
        },
        limits={
            "max_model_calls": 12,
            "max_tool_calls": 8,
            "max_wall_seconds": 60.0,
            "max_output_tokens": None,
        },
        **_at(2.6),
    ),
    StepStarted(
        key="draft:0:0", kind="draft", description="draft (round 0, candidate 0)", **_at(2.7)
    ),
    TextDelta(text="ACME's Q3 revenue was **$12.4M**, ", key="draft:0:0", **_at(3.0)),
]

AFTER_ANSWER: list[Event] = [
    TextDelta(text="Globex's was **$9.8M**: ACME leads by $2.6M.", key="draft:0:0", **_at(3.4)),
    ToolCallFinished(
        step_key="tool:s4", tool="send_email", result="queued for cfo@example.com", **_at(3.5)
    ),
    StepFinished(key="tool:s4", kind="tool", status="succeeded", duration_s=1.0, **_at(3.5)),
    StepFinished(key="draft:0:0", kind="draft", status="succeeded", duration_s=0.8, **_at(3.5)),
    RequirementScored(
        requirement="cites_both_figures",
        score=1.0,
        reason="both revenues are quoted",
        round=0,
        passed=True,
        **_at(3.9),
    ),
    RequirementScored(
        requirement="under_40_words", score=0.6, reason="52 words", round=0, **_at(3.9)
    ),
    FixRound(round=1, failing=["under_40_words"], **_at(4.0)),
    RequirementScored(
        requirement="under_40_words", score=1.0, reason="23 words", round=1, passed=True, **_at(5.1)
    ),
    BudgetUpdate(
        usage={
            "input_tokens": 3920,
            "output_tokens": 371,
            "requests": 5,
            "cost_usd": 0.0,
            "tool_calls": 5,
        },
        limits={"max_model_calls": 12, "max_tool_calls": 8, "max_wall_seconds": 60.0},
        **_at(5.2),
    ),
    RunFinished(
        result={
            "answer": "ACME's Q3 revenue was **$12.4M**, Globex's was **$9.8M**: ACME leads by $2.6M."
        },
        finish_reason="requirements_met",
        **_at(5.3),
    ),
]


class Replay:
    """A launcher that plays fixed events, optionally stopping at ``pause_at`` until resumed."""

    def __init__(self, events: Sequence[Event], pause_at: int | None = None) -> None:
        self.events = list(events)
        self.pause_at = pause_at
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    async def __call__(self, model: Model, request: RunRequest) -> AsyncGenerator[Event, None]:
        for index, event in enumerate(self.events):
            if index == self.pause_at:
                self.paused.set()
                await self.resume.wait()
            if isinstance(event, ApprovalRequested):
                yield event
                await request.approve(event)  # as the agent loop does: the modal opens
                continue
            yield event


@pytest.fixture(autouse=True)
def _frozen_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BudgetMeter, "clock", staticmethod(lambda: T0 + 4.2))
    monkeypatch.setattr(GenerationMeter, "clock", staticmethod(lambda: 100.0))


def _app(replay: Replay) -> MaestroApp:
    model = FunctionModel(lambda _m, _o: "unused", model_name="scripted")

    async def open_store() -> Store:
        return InMemoryStore()

    return create_app(Services("scripted", lambda: model, open_store, replay))


async def _settle(pilot: Pilot[None], predicate: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "snapshot setup timed out"
        await pilot.pause(0.02)
    # Let layout settle: a scrollbar can flicker while collapsibles are being mounted.
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.3)
    await pilot.pause()


def test_main_screen_idle(snap_compare: object) -> None:
    app = _app(Replay([]))

    async def ready(pilot: Pilot[None]) -> None:
        await _settle(pilot, lambda: app.store_ready.is_set() and app.stats.state == "ready")

    assert snap_compare(app, terminal_size=SNAPSHOT_SIZE, run_before=ready)  # type: ignore[operator]


def test_main_screen_mid_run(snap_compare: object) -> None:
    replay = Replay(BEFORE_ANSWER + AFTER_ANSWER, pause_at=len(BEFORE_ANSWER))
    app = _app(replay)

    async def mid_run(pilot: Pilot[None]) -> None:
        await _settle(pilot, lambda: app.stats.state == "ready")
        await pilot.press(*"compare Q3", "enter")
        await _settle(pilot, replay.paused.is_set)
        bubble = app.main_screen.query_one(ChatLog).messages[-1]
        await _settle(pilot, lambda: bubble.source.startswith("ACME's Q3"))

    assert snap_compare(app, terminal_size=SNAPSHOT_SIZE, run_before=mid_run)  # type: ignore[operator]


def test_approval_modal(snap_compare: object) -> None:
    ask = ApprovalRequested(
        step_key="tool:s4",
        tool="send_email",
        args={"to": "cfo@example.com", "subject": "Q3 revenue", "body": "ACME leads by $2.6M."},
        **_at(2.6),
    )
    app = _app(Replay([*BEFORE_ANSWER[:-3], ask]))

    async def asking(pilot: Pilot[None]) -> None:
        await _settle(pilot, lambda: app.stats.state == "ready")
        await pilot.press(*"compare Q3", "enter")
        await _settle(pilot, lambda: type(app.screen).__name__ == "ApprovalScreen")

    assert snap_compare(app, terminal_size=SNAPSHOT_SIZE, run_before=asking)  # type: ignore[operator]


def test_main_screen_finished(snap_compare: object) -> None:
    replay = Replay(BEFORE_ANSWER + AFTER_ANSWER)
    app = _app(replay)

    async def finished(pilot: Pilot[None]) -> None:
        await _settle(pilot, lambda: app.stats.state == "ready")
        await pilot.press(*"compare Q3", "enter")
        await _settle(pilot, lambda: app.run_view.status == "completed" and not app.run_active)

    assert snap_compare(app, terminal_size=SNAPSHOT_SIZE, run_before=finished)  # type: ignore[operator]
