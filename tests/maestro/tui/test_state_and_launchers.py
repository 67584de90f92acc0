"""Unit tests without a terminal: the run-view fold, the chat launcher's journaling, stored
events coming back as events, and ``--model`` specs."""

from __future__ import annotations

import asyncio

import pytest

from maestro.errors import ModelHTTPError
from maestro.events import (
    ApprovalRequested,
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
from maestro.llm.base import Model, ResponseDoneEvent, StreamEvent, TextDeltaEvent
from maestro.messages import Message, ModelRequestOptions, ModelResponse
from maestro.runs import InMemoryRunStore
from maestro.testing import FunctionModel, plan_step
from maestro.tui.launchers import chat_launcher, event_from_dict
from maestro.tui.models import display_name, model_loader
from maestro.tui.run_state import RunView
from maestro.tui.services import RunRequest

R = {"run_id": "r1"}


async def _never_asked(_prompt: object) -> bool:
    raise AssertionError("the chat launcher has no tools to approve")


def test_plan_steps_start_pending_and_follow_their_tool_calls() -> None:
    view = RunView()
    view.apply(RunStarted(task="t", **R))
    view.apply(
        PlanMade(
            plan={"steps": [plan_step("a", "search"), plan_step("b", "calc", depends_on=["a"])]},
            **R,
        )
    )
    assert [(s.key, s.state, s.depends_on) for s in view.steps.values()] == [
        ("tool:a", "pending", []),
        ("tool:b", "pending", ["a"]),
    ]
    view.apply(StepStarted(key="tool:a", kind="tool", **R))
    view.apply(ToolCallStarted(step_key="tool:a", tool="search", args={"q": 1}, **R))
    assert view.steps["tool:a"].state == "running"
    view.apply(ToolCallFinished(step_key="tool:a", tool="search", error="bad q", retry=True, **R))
    view.apply(ToolCallStarted(step_key="tool:a", tool="search", args={"q": "1"}, attempt=1, **R))
    assert view.steps["tool:a"].state == "retried"
    view.apply(ToolCallFinished(step_key="tool:a", tool="search", result="ok", **R))
    view.apply(StepFinished(key="tool:a", kind="tool", status="succeeded", retried=1, **R))
    assert (view.steps["tool:a"].state, view.steps["tool:a"].retries) == ("done", 1)
    assert [(c.attempt, c.retry, c.result) for c in view.tool_calls] == [
        (0, True, None),
        (1, False, "ok"),
    ]


def test_finishing_settles_every_step() -> None:
    view = RunView()
    view.apply(RunStarted(task="t", **R))
    view.apply(PlanMade(plan={"steps": [plan_step("a", "x"), plan_step("b", "y")]}, **R))
    view.apply(StepStarted(key="tool:a", kind="tool", **R))
    view.mark_cancelled()
    assert {k: s.state for k, s in view.steps.items()} == {
        "tool:a": "cancelled",
        "tool:b": "skipped",
    }
    failed = RunView()
    failed.apply(RunStarted(task="t", **R))
    failed.apply(StepStarted(key="plan", kind="plan", **R))
    failed.apply(RunFinished(result={}, finish_reason="model error", status="failed", **R))
    assert failed.steps["plan"].state == "failed" and not failed.active


def test_a_new_draft_replaces_the_streamed_text_and_scores_keep_history() -> None:
    view = RunView()
    view.apply(RunStarted(task="t", **R))
    view.apply(TextDelta(text="too long ", key="draft:0:0", **R))
    view.apply(TextDelta(text="answer", key="draft:0:0", **R))
    view.apply(RequirementScored(requirement="short", score=0.2, reason="long", round=0, **R))
    view.apply(FixRound(round=1, failing=["short"], **R))
    assert view.apply(TextDelta(text="short", key="draft:1:0", **R)) == {"text"}
    view.apply(
        RequirementScored(requirement="short", score=1.0, reason="ok", round=1, passed=True, **R)
    )
    assert view.answer == "short"
    req = view.requirements["short"]
    assert (req.history, req.reason, req.passed) == ([0.2, 1.0], "ok", True)
    assert [r.round for r in view.fix_rounds] == [1]


def test_approval_request_marks_the_call() -> None:
    view = RunView()
    view.apply(RunStarted(task="t", **R))
    view.apply(ToolCallStarted(step_key="tool:s", tool="send", args={}, **R))
    view.apply(ApprovalRequested(step_key="tool:s", tool="send", args={}, **R))
    assert view.tool_calls[-1].approval == "asked"
    view.record_decision("tool:s", "send", approved=False)
    assert view.tool_calls[-1].approval == "denied"


def test_stored_events_round_trip() -> None:
    events: list[Event] = [
        PlanMade(plan={"steps": [plan_step("a", "x")]}, **R),
        ToolCallFinished(step_key="tool:a", tool="x", result="1", **R),
        RequirementScored(requirement="r", score=0.5, reason="half", round=0, **R),
    ]
    for event in events:
        assert event_from_dict(event.to_dict()) == event
    assert event_from_dict({"type": "no_such_event", "run_id": "r1"}) is None
    assert event_from_dict({"type": "fix_round", "run_id": "r1"}) is None  # fields missing


async def test_chat_launcher_streams_and_journals_the_run() -> None:
    store = InMemoryRunStore()
    model = FunctionModel(lambda _m, _o: "two words")
    request = RunRequest("hi", _never_asked, run_store=store)
    events = [e async for e in chat_launcher(model, request)]
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "two words"
    run = store.runs[events[0].run_id]
    assert (run.status, run.result and run.result["answer"]) == ("completed", "two words")


class _FailingModel(Model):
    model_name = "failing"

    async def request(self, messages: list[Message], options: ModelRequestOptions) -> ModelResponse:
        raise AssertionError("stream is used")

    async def stream(self, messages: list[Message], options: ModelRequestOptions):  # type: ignore[override]
        yield TextDeltaEvent("partial ")
        raise ModelHTTPError(500, "server said 500")
        yield ResponseDoneEvent(ModelResponse(None))  # type: ignore[arg-type]  # pragma: no cover


async def test_chat_launcher_reports_a_model_failure_as_a_failed_run() -> None:
    store = InMemoryRunStore()
    events = [
        e
        async for e in chat_launcher(
            _FailingModel(), RunRequest("hi", _never_asked, run_store=store)
        )
    ]
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.status == "failed"
    assert "server said 500" in finished.finish_reason
    assert finished.result["answer"] == "partial "
    assert store.runs[finished.run_id].status == "failed"


class _SlowModel(Model):
    model_name = "slow"

    async def request(self, messages: list[Message], options: ModelRequestOptions) -> ModelResponse:
        raise AssertionError("stream is used")

    async def stream(self, messages: list[Message], options: ModelRequestOptions):  # type: ignore[override]
        yield TextDeltaEvent("start ")
        await asyncio.sleep(60)
        yield TextDeltaEvent("never")


async def test_cancelling_the_chat_launcher_records_a_cancelled_run() -> None:
    store = InMemoryRunStore()
    seen: list[StreamEvent | Event] = []

    async def consume() -> None:
        async for event in chat_launcher(
            _SlowModel(), RunRequest("hi", _never_asked, run_store=store)
        ):
            seen.append(event)

    task = asyncio.create_task(consume())
    while not any(isinstance(e, TextDelta) for e in seen):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (run,) = store.runs.values()
    assert run.status == "cancelled"


def test_model_specs() -> None:
    assert display_name("scripted:hello") == "scripted"
    assert display_name("http://localhost:8000/v1#qwen") == "qwen"
    assert display_name("smollm2-135m-instruct") == "smollm2-135m-instruct"
    scripted = model_loader("scripted:line one\\nline two")()
    reply = asyncio.run(scripted.request([], ModelRequestOptions()))
    assert reply.message.content == "line one\nline two"
    remote = model_loader("http://127.0.0.1:9/v1#served-name")()
    assert type(remote).__name__ == "OpenAIModel" and remote.model_name == "served-name"
    local = model_loader("smollm2-135m-instruct")()  # cheap: weights load on first use
    assert type(local).__name__ == "LocalModel"


def test_generation_meter_speed_throttle_and_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from maestro.messages import UserMessage
    from maestro.tui.generation import GenerationMeter, enable_prefix_cache
    from maestro.tui.widgets.run.model_status import ModelStats

    now = [10.0]
    monkeypatch.setattr(GenerationMeter, "clock", staticmethod(lambda: now[0]))
    stats = ModelStats("m")
    meter = GenerationMeter(stats)
    meter.begin([UserMessage("x" * 40)], "y" * 40)
    assert (stats.state, stats.context_used) == ("generating", 22)
    redraws = []
    for _ in range(11):  # 11 deltas over 1 s: 10 intervals -> 10 tok/s
        redraws.append(meter.token("a"))
        now[0] += 0.1
    assert stats.tokens_per_s == pytest.approx(10.0)
    assert redraws.count(True) < len(redraws)  # throttled, not one redraw per token

    class Engine:
        prefix_cache = None

        def enable_prefix_cache(self, max_bytes: int) -> object:
            self.prefix_cache = SimpleNamespace(stats=SimpleNamespace(hits=3, requests=4))
            return self.prefix_cache

    engine = Engine()
    enable_prefix_cache(engine)
    meter.end("answer", model=object(), engine=engine)
    assert (stats.state, stats.cache_hits, stats.cache_lookups) == ("ready", 3, 4)
