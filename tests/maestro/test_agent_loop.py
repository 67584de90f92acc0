"""The Maestro loop driven by ScriptedModel: concurrency, tool retries, fix rounds, budgets,
mandatory requirements, cancellation, approval and resume after a crash."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from maestro.agent import Agent
from maestro.budget import Budget
from maestro.events import (
    ApprovalRequested,
    Event,
    FixRound,
    RunFinished,
    RunStarted,
    StepFinished,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
)
from maestro.loop.execute import ApprovalRequest
from maestro.messages import ToolResultMessage
from maestro.requirements import Requirement
from maestro.runs import InMemoryRunStore
from maestro.testing import ScriptedModel, judge, plan, plan_step, tool_call
from maestro.tool import ToolContext, tool


async def test_independent_steps_run_concurrently() -> None:
    a_started, b_started = anyio.Event(), anyio.Event()

    @tool
    async def fetch_a() -> str:
        """Fetch A."""
        a_started.set()
        with anyio.fail_after(5):  # deadlocks (and fails) if B never starts while A runs
            await b_started.wait()
        return "A"

    @tool
    async def fetch_b() -> str:
        """Fetch B."""
        b_started.set()
        with anyio.fail_after(5):
            await a_started.wait()
        return "B"

    model = ScriptedModel([plan(plan_step("a", "fetch_a"), plan_step("b", "fetch_b")), "A and B"])
    result = await Agent(model, tools=[fetch_a, fetch_b]).run("get both")
    assert result.finish_reason == "completed"
    statuses = {t.key: t.status for t in result.trace if t.kind == "tool"}
    assert statuses == {"tool:a": "succeeded", "tool:b": "succeeded"}
    assert "[a] fetch_a({}) -> A" in model.last_request.messages[-1].content


async def test_dependent_step_waits_and_receives_the_result() -> None:
    order: list[str] = []

    @tool
    def double(x: int) -> int:
        """Double x."""
        order.append(f"double({x})")
        return 2 * x

    model = ScriptedModel(
        [
            plan(plan_step("s1", "double", {"x": 3}), plan_step("s2", "double", {"x": "{{s1}}"})),
            "12",
        ]
    )
    result = await Agent(model, tools=[double]).run("quadruple 3")
    assert order == ["double(3)", "double(6)"]
    assert [s["excerpt"] for s in result.data_sources] == ["6", "12"]


async def test_malformed_tool_argument_gets_a_retry_message_then_succeeds() -> None:
    calls: list[int] = []

    @tool
    def square(n: int) -> int:
        """Square an integer."""
        calls.append(n)
        return n * n

    model = ScriptedModel(
        [
            plan(plan_step("s1", "square", {"n": "seven"})),
            tool_call("square", {"n": 7}),
            "49",
        ]
    )
    events: list[Event] = []
    agent = Agent(model, tools=[square])
    async for event in agent.run_stream("square seven"):
        events.append(event)
    repair = model.requests[1]
    error = repair.messages[-1]
    assert isinstance(error, ToolResultMessage) and error.is_error
    assert "n: Input should be a valid integer" in error.content
    assert repair.options.tool_choice == "square"
    assert calls == [7]  # the invalid call never reached the function
    retried = [e for e in events if isinstance(e, ToolCallFinished) and e.retry]
    assert len(retried) == 1
    finished = [e for e in events if isinstance(e, StepFinished) and e.kind == "tool"]
    assert finished[0].status == "succeeded" and finished[0].retried == 1
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)


async def test_tool_raising_toolretry_is_asked_again() -> None:
    from maestro.errors import ToolRetry

    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        if key != "b":
            raise ToolRetry(f"no key {key!r}; known keys: ['b']")
        return "found"

    model = ScriptedModel(
        [plan(plan_step("s1", "lookup", {"key": "a"})), tool_call("lookup", {"key": "b"}), "found"]
    )
    result = await Agent(model, tools=[lookup]).run("find")
    assert result.data_sources[0]["excerpt"] == "found"
    assert "known keys" in model.requests[1].messages[-1].content


async def test_failing_requirement_passes_after_a_fix_round() -> None:
    short = Requirement("at most five words", check=lambda a: len(a.split()) <= 5)
    model = ScriptedModel(["this answer is far too long to pass", "short answer now"])
    agent = Agent(model, requirements=[short], budget=Budget.of("low", fix_rounds=2))
    events = [e async for e in agent.run_stream("answer briefly")]
    result_event = events[-1]
    assert isinstance(result_event, RunFinished)
    assert result_event.finish_reason == "requirements_met"
    report = result_event.result["report"]
    assert report["requirements"][0]["history"] == [0.0, 1.0]
    assert report["passed"] is True
    assert [e.round for e in events if isinstance(e, FixRound)] == [1]
    fix_request = model.requests[1].messages[-1].content
    assert "at most five words" in fix_request
    assert "".join(e.text for e in events if isinstance(e, TextDelta) and e.key == "draft:1:0") == (
        "short answer now"
    )


async def test_judged_requirement_and_fix_round_report_both_scores() -> None:
    polite = Requirement("the answer is polite")
    model = ScriptedModel(
        ["No.", judge(0.1, "curt"), "No, thank you kindly.", judge(1.0, "polite")]
    )
    result = await Agent(model, requirements=[polite]).run("decline")
    assert result.answer == "No, thank you kindly."
    assert result.report.history(polite.name) == [0.1, 1.0]
    assert result.report.rounds[0][0].reason == "curt"
    assert model.requests[1].options.response_format is not None  # judge under a schema


async def test_model_call_cap_stops_with_finish_reason_and_partial_result() -> None:
    polite = Requirement("the answer is polite")
    model = ScriptedModel(["No.", judge(0.1, "curt"), "never reached"])
    agent = Agent(model, requirements=[polite], budget=Budget.of("high", max_model_calls=2))
    result = await agent.run("decline")
    assert result.finish_reason == "max_model_calls"
    assert result.status == "completed"
    assert result.answer == "No."  # best so far
    assert result.report.history(polite.name) == [0.1]
    assert result.usage.requests == 2 and model.remaining == 1


async def test_tool_call_cap_stops_before_the_second_tool_runs() -> None:
    ran: list[str] = []

    @tool
    def step(name: str) -> str:
        """Do a step."""
        ran.append(name)
        return name

    model = ScriptedModel(
        [
            plan(
                plan_step("s1", "step", {"name": "one"}),
                plan_step("s2", "step", {"name": "two"}, depends_on=["s1"]),
            )
        ]
    )
    result = await Agent(model, tools=[step], budget=Budget(max_tool_calls=1)).run("two steps")
    assert result.finish_reason == "max_tool_calls"
    assert ran == ["one"]
    assert [s["excerpt"] for s in result.data_sources] == ["one"]
    assert result.answer == ""


async def test_wall_time_cap_ends_a_hanging_tool() -> None:
    @tool
    async def hang() -> str:
        """Never returns."""
        await anyio.sleep(30)
        return "late"

    model = ScriptedModel([plan(plan_step("s1", "hang"))])
    with anyio.fail_after(5):
        result = await Agent(model, tools=[hang], budget=Budget(max_wall_seconds=0.2)).run("x")
    assert result.finish_reason == "max_wall_time"


async def test_usd_cap_with_priced_model() -> None:
    from maestro.llm.base import Pricing

    model = ScriptedModel(["draft one " * 50, judge(0.0, "no"), "x"], pricing=Pricing(100.0, 100.0))
    agent = Agent(model, requirements=[Requirement("good")], budget=Budget(max_usd=0.01))
    result = await agent.run("write")
    assert result.finish_reason == "max_usd"
    assert result.usage.requests == 1 and result.usage.cost_usd >= 0.01
    assert result.answer.startswith("draft one")
    # A prompt that alone costs more than the cap is refused before it is sent.
    pricey = ScriptedModel(["never"], pricing=Pricing(1_000_000.0, 0.0))
    refused = await Agent(pricey, budget=Budget(max_usd=0.01)).run("write")
    assert refused.finish_reason == "max_usd" and pricey.requests == []


async def test_mandatory_requirement_never_passing_scores_zero() -> None:
    must = Requirement("mentions the word banana", check=lambda a: "banana" in a, mandatory=True)
    nice = Requirement("is short", check=lambda a: len(a) < 100)
    model = ScriptedModel(["apple", "cherry"])
    result = await Agent(model, requirements=[must, nice]).run("fruit")
    assert result.finish_reason == "max_fix_rounds"
    assert result.report.score == 0.0
    assert not result.passed
    assert "score is 0 because mandatory requirement(s) failed" in result.report.summary()
    assert "mentions the word banana" in result.report.summary()
    assert result.report.history(nice.name) == [1.0, 1.0]


async def test_cancellation_mid_tool_stops_the_run_promptly() -> None:
    started = asyncio.Event()
    seen_cancel: list[bool] = []

    @tool
    async def slow() -> str:
        """Slow work."""
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen_cancel.append(True)
            raise
        return "done"

    store = InMemoryRunStore()
    model = ScriptedModel([plan(plan_step("s1", "slow")), "never"])
    agent = Agent(model, tools=[slow], store=store)
    task = asyncio.create_task(agent.run("slow task", run_id="run-cancel"))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert seen_cancel == [True]
    assert store.runs["run-cancel"].status == "cancelled"
    assert store.events["run-cancel"][-1]["type"] == "run_finished"
    assert model.remaining == 1  # no draft after cancellation


async def test_breaking_out_of_run_stream_cancels_the_run() -> None:
    cancelled: list[bool] = []

    @tool
    async def slow() -> str:
        """Slow work."""
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "done"

    store = InMemoryRunStore()
    agent = Agent(ScriptedModel([plan(plan_step("s1", "slow"))]), tools=[slow], store=store)
    stream = agent.run_stream("go", run_id="r-break")
    async for event in stream:
        if isinstance(event, ToolCallStarted):
            break
    await stream.aclose()  # type: ignore[attr-defined]
    assert cancelled == [True]
    assert store.runs["r-break"].status == "cancelled"


@pytest.mark.parametrize("decision", [False, True])
async def test_approval_decides_whether_a_side_effecting_tool_runs(decision: bool) -> None:
    sent: list[str] = []
    asked: list[ApprovalRequest] = []

    @tool(side_effects=True, requires_approval=True)
    def send_email(to: str) -> str:
        """Send an email."""
        sent.append(to)
        return "sent"

    async def approve(request: ApprovalRequest) -> bool:
        asked.append(request)
        return decision

    model = ScriptedModel([plan(plan_step("s1", "send_email", {"to": "a@b.c"})), "ok"])
    events: list[Event] = []
    agent = Agent(model, tools=[send_email], approval=approve)
    async for event in agent.run_stream("email"):
        events.append(event)
    assert [r.args for r in asked] == [{"to": "a@b.c"}]
    assert any(isinstance(e, ApprovalRequested) for e in events)
    step = next(e for e in events if isinstance(e, StepFinished) and e.kind == "tool")
    if decision:
        assert sent == ["a@b.c"] and step.status == "succeeded"
    else:
        assert sent == [] and step.status == "denied"
        assert "DENIED" in model.last_request.messages[-1].content


async def test_approval_without_callback_denies() -> None:
    sent: list[str] = []

    @tool(requires_approval=True)
    def wipe() -> str:
        """Wipe."""
        sent.append("x")
        return "wiped"

    result = await Agent(ScriptedModel([plan(plan_step("s1", "wipe")), "ok"]), tools=[wipe]).run(
        "w"
    )
    assert sent == []
    assert result.trace[1].status == "denied"


class SimulatedCrash(BaseException):
    """Stands in for the process dying: not an Exception, so nothing in the loop catches it."""


async def test_resume_after_crash_does_not_rerun_finished_tool_calls() -> None:
    runs: dict[str, int] = {"reserve": 0, "charge": 0}
    keys: list[str] = []
    crash = True

    @tool(side_effects=True)
    def reserve(ctx: ToolContext, item: str) -> str:
        """Reserve an item."""
        runs["reserve"] += 1
        return f"reserved {item}"

    @tool(side_effects=True)
    def charge(ctx: ToolContext, amount: int) -> str:
        """Charge money."""
        runs["charge"] += 1
        keys.append(ctx.idempotency_key)
        if crash:
            raise SimulatedCrash()
        return f"charged {amount}"

    store = InMemoryRunStore()
    the_plan = plan(
        plan_step("s1", "reserve", {"item": "seat"}),
        plan_step("s2", "charge", {"amount": 5}, depends_on=["s1"]),
    )
    first = Agent(ScriptedModel([the_plan]), tools=[reserve, charge], store=store)
    with pytest.raises(SimulatedCrash):
        await first.run("book", run_id="run-crash")
    assert store.runs["run-crash"].status == "running"
    steps = {s.key: s.status for s in await store.get_steps("run-crash")}
    assert steps == {"plan": "succeeded", "tool:s1": "succeeded", "tool:s2": "running"}

    crash = False
    model = ScriptedModel(["booked"])  # only the draft: the plan is replayed from the store
    second = Agent(model, tools=[reserve, charge], store=store)
    result = await second.resume("run-crash")
    assert runs == {"reserve": 1, "charge": 2}
    assert keys[0] == keys[1]  # same idempotency key on re-execution
    assert result.answer == "booked" and result.finish_reason == "completed"
    assert store.runs["run-crash"].status == "completed"
    replayed = {t.key for t in result.trace if t.replayed}
    assert replayed == {"plan", "tool:s1"}
    assert len(model.requests) == 1


async def test_resume_of_a_finished_run_replays_everything() -> None:
    store = InMemoryRunStore()
    agent = Agent(ScriptedModel(["answer"]), store=store)
    first = await agent.run("q")
    again = await Agent(ScriptedModel([]), store=store).resume(first.run_id)
    assert again.answer == "answer"


async def test_unknown_tool_in_plan_is_sent_back_for_a_corrected_plan() -> None:
    @tool
    def calculator(expression: str) -> str:
        """Evaluate arithmetic."""
        return "4"

    model = ScriptedModel(
        [
            plan(plan_step("s1", "calc", {"expression": "2+2"})),
            plan(plan_step("s1", "calculator", {"expression": "2+2"})),
            "4",
        ]
    )
    result = await Agent(model, tools=[calculator]).run("2+2")
    assert "unknown tool 'calc'" in model.requests[1].messages[-1].content
    assert result.data_sources[0]["tool"] == "calculator"


async def test_failed_step_triggers_a_replan() -> None:
    @tool
    def flaky(source: str) -> str:
        """Fetch from a source."""
        if source == "down":
            raise RuntimeError("source is down")
        return "data"

    model = ScriptedModel(
        [
            plan(plan_step("s1", "flaky", {"source": "down"})),
            plan(plan_step("s1", "flaky", {"source": "mirror"})),
            "data",
        ]
    )
    agent = Agent(model, tools=[flaky], budget=Budget.of("medium"))
    result = await agent.run("fetch", budget=Budget.of("medium", candidates=1))
    assert "source is down" in model.requests[1].messages[-1].content
    keys = [t.key for t in result.trace if t.kind == "tool"]
    assert keys == ["tool:s1", "tool:r1.s1"]
    assert any(s["excerpt"] == "data" for s in result.data_sources)


async def test_structured_output_type_is_validated_and_retried() -> None:
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        population: int

    model = ScriptedModel(
        ['{"name": "Paris"}', '```json\n{"name": "Paris", "population": 2100000}\n```']
    )
    result = await Agent(model, output_type=City).run("largest French city")
    assert result.output == City(name="Paris", population=2100000)
    assert model.requests[0].options.response_format["title"] == "City"
    assert "population" in model.requests[1].messages[-1].content


async def test_candidates_best_one_is_kept() -> None:
    longer = Requirement("long", check=lambda a: min(1.0, len(a) / 20))
    model = ScriptedModel(["short", "a much much longer answer", "x"])
    budget = Budget.of("medium", fix_rounds=0, candidates=3)
    result = await Agent(model, requirements=[longer], budget=budget).run("t")
    assert result.answer == "a much much longer answer"
    assert model.requests[1].options.temperature == 0.8


def test_run_sync_works_outside_a_loop() -> None:
    result = Agent(ScriptedModel(["hi"])).run_sync("hello")
    assert result.answer == "hi"
    assert result.to_dict()["usage"]["requests"] == 1


async def test_events_are_persisted_and_json_safe() -> None:
    import json

    store = InMemoryRunStore()
    await Agent(ScriptedModel(["hi"]), store=store).run("q", run_id="r1")
    types = [e["type"] for e in store.events["r1"]]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    json.dumps(store.events["r1"])


async def test_resume_through_the_sql_run_store(tmp_path: Any) -> None:
    """The same crash/resume contract on the SQL store the memory package provides."""
    from maestro.memory import Database

    ran: list[str] = []
    crash = True

    @tool(side_effects=True)
    def act(name: str) -> str:
        """Act."""
        ran.append(name)
        if crash and name == "second":
            raise SimulatedCrash()
        return name

    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}")
    try:
        the_plan = plan(
            plan_step("s1", "act", {"name": "first"}),
            plan_step("s2", "act", {"name": "second"}, depends_on=["s1"]),
        )
        with pytest.raises(SimulatedCrash):
            await Agent(ScriptedModel([the_plan]), tools=[act], store=db.runs).run(
                "x", run_id="sql-1"
            )
        crash = False
        result = await Agent(ScriptedModel(["done"]), tools=[act], store=db.runs).resume("sql-1")
        assert ran == ["first", "second", "second"]
        assert result.answer == "done"
        record = await db.runs.get_run("sql-1")
        assert record is not None and record.status == "completed"
    finally:
        await db.close()


async def test_cap_during_first_validation_still_returns_the_draft() -> None:
    judged = Requirement("judged by the model")
    model = ScriptedModel(["first draft", judge(1.0, "fine")])
    result = await Agent(model, requirements=[judged], budget=Budget(max_model_calls=1)).run("t")
    assert result.finish_reason == "max_model_calls"
    assert result.answer == "first draft"
    assert not result.passed and result.report.rounds == []


async def test_plain_functions_and_string_requirements_are_accepted() -> None:
    def shout(text: str) -> str:
        """Upper-case text."""
        return text.upper()

    model = ScriptedModel([plan(plan_step("s1", "shout", {"text": "hi"})), "HI", judge(1.0, "ok")])
    result = await Agent(model, tools=[shout], requirements=["is loud"]).run("shout hi")
    assert result.data_sources[0]["excerpt"] == "HI"
    assert result.report.final[0].description == "is loud" and result.passed
    from maestro.errors import UserError

    with pytest.raises(UserError, match="not a Tool or a function"):
        Agent(model, tools=[42])  # type: ignore[list-item]


async def test_a_bug_in_a_check_raises_and_closes_the_run_as_failed() -> None:
    from maestro.errors import UserError

    store = InMemoryRunStore()
    bad = Requirement("bad check", check=lambda a: "yes")  # type: ignore[arg-type,return-value]
    with pytest.raises(UserError, match="return bool"):
        await Agent(ScriptedModel(["x"]), requirements=[bad], store=store).run("t", run_id="bug")
    assert store.runs["bug"].status == "failed"
    assert "UserError" in (store.runs["bug"].result or {}).get("error", "")


async def test_failed_step_skips_its_dependents_but_a_note_does_not() -> None:
    ran: list[str] = []

    @tool
    def act(name: str) -> str:
        """Act."""
        ran.append(name)
        if name == "bad":
            raise RuntimeError("broken")
        return name

    model = ScriptedModel(
        [
            plan(
                plan_step("n1", None),
                plan_step("s1", "act", {"name": "after-note"}, depends_on=["n1"]),
                plan_step("s2", "act", {"name": "bad"}),
                plan_step("s3", "act", {"name": "after-bad"}, depends_on=["s2"]),
            ),
            "done",
        ]
    )
    result = await Agent(model, tools=[act]).run("t")
    assert sorted(ran) == ["after-note", "bad"]
    statuses = {t.key: t.status for t in result.trace if t.kind == "tool"}
    assert statuses["tool:s3"] == "skipped" and statuses["tool:s1"] == "succeeded"


async def test_judges_run_concurrently_and_scores_keep_requirement_order() -> None:
    from maestro.messages import Message, ModelRequestOptions
    from maestro.testing import FunctionModel

    waiting = 0
    both_waiting = anyio.Event()

    async def answer(messages: list[Message], options: ModelRequestOptions) -> str:
        nonlocal waiting
        if options.response_format is None:
            return "draft"
        waiting += 1
        if waiting == 2:
            both_waiting.set()
        with anyio.fail_after(5):  # a sequential judge would wait here forever
            await both_waiting.wait()
        requirement = messages[-1].content.split("Requirement:\n")[1].split("\n")[0]
        return judge(1.0 if requirement == "first" else 0.5, requirement)

    reqs = [Requirement("first"), Requirement("len", check=lambda a: True), Requirement("second")]
    result = await Agent(FunctionModel(answer), requirements=reqs, budget=Budget(fix_rounds=0)).run(
        "t"
    )
    assert [(s.description, s.score) for s in result.report.final] == [
        ("first", 1.0),
        ("len", 1.0),
        ("second", 0.5),
    ]


async def test_concurrent_judges_cannot_overshoot_the_call_cap() -> None:
    reqs = [Requirement("a"), Requirement("b"), Requirement("c")]
    model = ScriptedModel(["draft", judge(1.0), judge(1.0), judge(1.0)])
    result = await Agent(model, requirements=reqs, budget=Budget(max_model_calls=3)).run("t")
    assert result.finish_reason == "max_model_calls"
    assert len(model.requests) == 3 and result.usage.requests == 3
