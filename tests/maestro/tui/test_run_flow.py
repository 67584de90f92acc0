"""Pilot tests of a task's life in the TUI, driven by a real Agent on a ScriptedModel with a
temporary SQLite database: streamed text, the plan tree reaching "done", requirement scores,
approvals (approve, deny, always), cancellation, and resuming an interrupted run."""

from __future__ import annotations

import io

import anyio
from rich.console import Console

from maestro.requirements import Requirement
from maestro.runs import RunRecord
from maestro.testing import FunctionModel, ScriptedModel, judge, plan, plan_step
from maestro.tool import tool
from maestro.tui.stores import DatabaseStore
from maestro.tui.widgets.chat.chat_log import ChatLog
from maestro.tui.widgets.chat.chat_message import ChatMessage
from maestro.tui.widgets.run.plan_tree import PlanTree
from maestro.tui.widgets.run.scoreboard import render_scores
from maestro.tui.widgets.run.tool_calls import ToolCalls

from .conftest import SIZE, PacedModel, build_app, drain, wait_until


@tool
def weather(city: str) -> str:
    """Current weather for a city."""
    return f"21 °C and sunny in {city}"


def _plain(renderable: object) -> str:
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def _answers(app: object) -> list[str]:
    log = app.main_screen.query_one(ChatLog)  # type: ignore[attr-defined]
    return [m.text for m in log.messages if m.role == "assistant"]


async def test_task_streams_text_plan_reaches_done_and_scores_show(db_store: DatabaseStore) -> None:
    mentions = Requirement("mentions the temperature", check=lambda a: "°C" in a)
    friendly = Requirement("the tone is friendly")
    model = PacedModel(
        [
            plan(plan_step("s1", "weather", {"city": "Paris"})),
            "It is 21 °C and sunny in Paris — enjoy the day!",
            judge(1.0, "warm and helpful wording"),
        ],
        pause_after=3,
    )
    app = build_app(model, db_store, tools=[weather], requirements=[mentions, friendly])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"weather in Paris?", "enter")
        await wait_until(pilot, model.paused.is_set, what="the answer to start streaming")
        bubble = app.main_screen.query_one(ChatLog).messages[-1]
        # Half an answer is on screen while the model is still writing it.
        await wait_until(pilot, lambda: bubble.source == "It is 21", what="partial text shown")
        assert app.run_view.status == "running"
        assert app.main_screen.query_one(PlanTree).state_of("tool:s1") == "done"
        model.resume.set()
        await wait_until(pilot, lambda: app.run_view.status == "completed", what="run completed")
        await app.workers.wait_for_complete()
        await pilot.pause()

        assert _answers(app) == ["It is 21 °C and sunny in Paris — enjoy the day!"]
        assert bubble.source == "It is 21 °C and sunny in Paris — enjoy the day!"
        tree = app.main_screen.query_one(PlanTree)
        assert tree.state_of("tool:s1") == "done"
        labels = [str(node.label) for node in tree.root.children]
        assert any("s1: weather" in label for label in labels)

        scores = {name: (r.score, r.reason) for name, r in app.run_view.requirements.items()}
        assert scores[mentions.name][0] == 1.0
        assert scores[friendly.name] == (1.0, "warm and helpful wording")
        rendered = _plain(render_scores(app.run_view))
        assert "the_tone_is_friendly" in rendered and "warm and helpful wording" in rendered
        tool_titles = [c.title for c in app.main_screen.query_one(ToolCalls).query("Collapsible")]
        assert tool_titles and "✔ weather" in tool_titles[0]
        await drain(app)

    # The conversation and the run are in the database.
    threads = await db_store.list_threads()
    assert len(threads) == 1
    messages = await db_store.thread_messages(threads[0].id)
    assert [(m.role, m.content) for m in messages] == [
        ("user", "weather in Paris?"),
        ("assistant", "It is 21 °C and sunny in Paris — enjoy the day!"),
    ]
    runs = await db_store.list_runs()
    assert [r.status for r in runs] == ["completed"]


async def test_tokens_are_batched_not_painted_one_by_one(db_store: DatabaseStore) -> None:
    words = " ".join(f"word{i}" for i in range(400))
    model = PacedModel([words], delay=0.002)
    app = build_app(model, db_store)
    flushes: list[object] = []
    async with app.run_test(size=SIZE, message_hook=flushes.append) as pilot:
        await pilot.press(*"talk", "enter")
        await wait_until(pilot, lambda: app.run_view.status == "completed", what="run completed")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert _answers(app) == [words]
        await drain(app)
    # A message bubbles through several widgets and the hook sees every hop: count objects.
    painted = {id(m) for m in flushes if isinstance(m, ChatMessage.Flushed)}
    assert 1 <= len(painted) < 400 / 4, f"{len(painted)} repaints for 400 deltas"


def _mailer() -> tuple[object, list[str]]:
    sent: list[str] = []

    @tool(side_effects=True, requires_approval=True)
    def send_email(to: str, body: str) -> str:
        """Send an email."""
        sent.append(to)
        return f"sent to {to}"

    return send_email, sent


async def test_approving_a_tool_lets_it_run(db_store: DatabaseStore) -> None:
    send_email, sent = _mailer()
    model = ScriptedModel(
        [plan(plan_step("s1", "send_email", {"to": "ana@example.com", "body": "hi"})), "Sent."]
    )
    app = build_app(model, db_store, tools=[send_email])  # type: ignore[list-item]
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"email ana", "enter")
        await wait_until(pilot, lambda: app.screen.id != "main", what="approval modal")
        assert type(app.screen).__name__ == "ApprovalScreen"
        assert sent == []  # nothing runs while the modal waits
        await pilot.press("a")
        await wait_until(pilot, lambda: app.run_view.status == "completed", what="run completed")
        assert sent == ["ana@example.com"]
        assert app.main_screen.query_one(PlanTree).state_of("tool:s1") == "done"
        assert app.run_view.tool_calls[0].approval == "approved"
        await drain(app)


async def test_denying_a_tool_means_it_never_runs(db_store: DatabaseStore) -> None:
    send_email, sent = _mailer()
    model = ScriptedModel(
        [plan(plan_step("s1", "send_email", {"to": "bo@example.com", "body": "hi"})), "Not sent."]
    )
    app = build_app(model, db_store, tools=[send_email])  # type: ignore[list-item]
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"email bo", "enter")
        await wait_until(pilot, lambda: app.screen.id != "main", what="approval modal")
        await pilot.click("#deny")
        await wait_until(pilot, lambda: app.run_view.status == "completed", what="run completed")
        assert sent == []
        assert app.main_screen.query_one(PlanTree).state_of("tool:s1") == "denied"
        assert app.run_view.tool_calls[0].approval == "denied"
        await drain(app)


async def test_always_approves_later_calls_of_that_tool_in_the_run(db_store: DatabaseStore) -> None:
    send_email, sent = _mailer()
    model = ScriptedModel(
        [
            plan(
                plan_step("s1", "send_email", {"to": "a@example.com", "body": "1"}),
                plan_step(
                    "s2", "send_email", {"to": "b@example.com", "body": "2"}, depends_on=["s1"]
                ),
            ),
            "Both sent.",
        ]
    )
    app = build_app(model, db_store, tools=[send_email])  # type: ignore[list-item]
    modals = 0
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"email both", "enter")
        await wait_until(pilot, lambda: app.screen.id != "main", what="approval modal")
        modals += 1
        await pilot.press("A")
        await wait_until(pilot, lambda: app.run_view.status == "completed", what="run completed")
        assert sent == ["a@example.com", "b@example.com"]
        assert modals == 1 and app.screen.id == "main"
        await drain(app)


async def test_cancelling_a_run_stops_the_tool_and_records_it(db_store: DatabaseStore) -> None:
    started, stopped = anyio.Event(), []

    @tool
    async def crawl(site: str) -> str:
        """Crawl a site (slowly)."""
        started.set()
        try:
            await anyio.sleep(60)
        finally:
            stopped.append(site)
        return "never"

    model = ScriptedModel([plan(plan_step("s1", "crawl", {"site": "example.org"})), "unused"])
    app = build_app(model, db_store, tools=[crawl])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"crawl it", "enter")
        await wait_until(pilot, started.is_set, what="tool started")
        assert app.main_screen.query_one(PlanTree).state_of("tool:s1") == "running"
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.run_view.status == "cancelled", what="cancelled")
        await app.workers.wait_for_complete()
        assert stopped == ["example.org"]
        assert app.main_screen.query_one(PlanTree).state_of("tool:s1") == "cancelled"
        bubble = app.main_screen.query_one(ChatLog).messages[-1]
        assert bubble.border_subtitle == "cancelled"
        assert model.remaining == 1  # no draft after the cancel
        await drain(app)
    runs = await db_store.list_runs()
    assert [r.status for r in runs] == ["cancelled"]


async def test_resume_continues_an_interrupted_run(db_store: DatabaseStore) -> None:
    await db_store.run_store().create_run(RunRecord("run-crashed", "what is the weather in Oslo?"))
    model = ScriptedModel([plan(plan_step("s1", "weather", {"city": "Oslo"})), "Oslo: 21 °C."])
    app = build_app(model, db_store, tools=[weather])
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, app.store_ready.is_set, what="store open")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: app.run_view.status == "completed", what="resumed run")
        await app.workers.wait_for_complete()
        assert app.run_view.run_id == "run-crashed" and app.run_view.resumed
        assert _answers(app) == ["Oslo: 21 °C."]
        assert app.main_screen.query_one(PlanTree).state_of("tool:s1") == "done"
        await drain(app)
    record = await db_store.run_store().get_run("run-crashed")
    assert record is not None and record.status == "completed"


async def test_a_task_sent_while_the_model_loads_waits_for_it(db_store: DatabaseStore) -> None:
    model = FunctionModel(lambda _m, _o: "ready now")
    app = build_app(model, db_store, load_delay=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"hello", "enter")  # the UI takes input before the model is ready
        await wait_until(pilot, lambda: app.run_view.status == "completed", what="run completed")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert _answers(app) == ["ready now"]
        assert app.stats.state == "ready"
        await drain(app)


async def test_a_failing_model_ends_the_run_with_the_reason_shown(db_store: DatabaseStore) -> None:
    from maestro.errors import ModelHTTPError

    def broken(_messages: object, _options: object) -> str:
        raise ModelHTTPError(503, "the model server is overloaded")

    app = build_app(FunctionModel(broken), db_store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"hello", "enter")
        await wait_until(pilot, lambda: app.run_view.status == "failed", what="failed run")
        await drain(app)
        bubble = app.main_screen.query_one(ChatLog).messages[-1]
        assert "overloaded" in bubble.text and "overloaded" in str(bubble.border_subtitle)
        assert app.stats.state == "ready"  # the model is still usable for the next task
